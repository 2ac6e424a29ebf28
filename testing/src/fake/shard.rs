//! `shardSelector` (KEP-5866, kube-apiserver 1.36+ behind the `ShardedListAndWatch` gate): the
//! objects of a list or watch whose 64-bit FNV-1a hash of `metadata.uid` or
//! `metadata.namespace` lies in one of the ranges asked for.
//!
//! kube-apiserver parses the parameter as a CEL expression and accepts only `shardRange(field,
//! 'start', 'end')` calls joined by `||`; this parser accepts the same subset of CEL (calls,
//! field paths, string literals in either quote, parentheses) and refuses the rest with
//! kube-apiserver's messages, so a client meets the same answers here as on a cluster.

use serde_json::Value;

/// One `shardRange(key, start, end)`: bounds as the request wrote them (validated canonical).
#[derive(Debug, Clone, PartialEq)]
struct Requirement {
    key: String,
    start: String,
    end: String,
}

/// A parsed shard selector: the union of its ranges, over one field.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardSelector(Vec<Requirement>);

/// The 64-bit FNV-1a hash, as kube-apiserver computes it for sharding.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// kube-apiserver's order on canonical bounds: a longer string (only 2^64 has 17 digits) is
/// larger, otherwise lexical.
fn hex_less(a: &str, b: &str) -> bool {
    if a.len() != b.len() {
        a.len() < b.len()
    } else {
        a < b
    }
}

impl ShardSelector {
    /// Parses a `shardSelector` value; the error is the message kube-apiserver gives after
    /// "invalid shard selector: ".
    pub fn parse(expr: &str) -> Result<Self, String> {
        let expr = expr.trim();
        if expr.is_empty() {
            return Err(
                "empty shard selector is not allowed; omit the parameter for unfiltered lists"
                    .into(),
            );
        }
        let tokens = tokenize(expr)?;
        let mut p = Parser { tokens, at: 0 };
        let ast = p.or_expr()?;
        if p.at != p.tokens.len() {
            return Err(format!(
                "CEL parse error: Syntax error: extraneous input '{}'",
                p.tokens[p.at].text()
            ));
        }
        let reqs = walk(&ast)?;
        if let Some(first) = reqs.first()
            && let Some(other) = reqs.iter().find(|r| r.key != first.key)
        {
            return Err(format!(
                "all shard ranges must use the same field, got {:?} and {:?}",
                first.key, other.key
            ));
        }
        Ok(ShardSelector(reqs))
    }

    /// Whether the object is selected.
    pub fn matches(&self, obj: &Value) -> bool {
        let Some(first) = self.0.first() else {
            return true;
        };
        let field = match first.key.as_str() {
            "object.metadata.uid" => "/metadata/uid",
            _ => "/metadata/namespace",
        };
        let value = obj.pointer(field).and_then(Value::as_str).unwrap_or("");
        let hash = format!("0x{:016x}", fnv1a64(value.as_bytes()));
        self.0
            .iter()
            .any(|r| !hex_less(&hash, &r.start) && hex_less(&hash, &r.end))
    }

    /// The selector as kube-apiserver prints it in `shardInfo.selector`.
    pub fn canonical(&self) -> String {
        self.0
            .iter()
            .map(|r| format!("shardRange({}, '{}', '{}')", r.key, r.start, r.end))
            .collect::<Vec<_>>()
            .join(" || ")
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    /// A literal that is not a string (a number, `true`), kept as written.
    Other(String),
    Dot,
    Comma,
    Open,
    Close,
    Or,
    /// An operator CEL knows but the selector does not allow (`&&`, `==`, `!`, ...).
    Op(String),
}

impl Token {
    fn text(&self) -> String {
        match self {
            Token::Ident(s) | Token::Other(s) | Token::Op(s) => s.clone(),
            Token::Str(s) => format!("'{s}'"),
            Token::Dot => ".".into(),
            Token::Comma => ",".into(),
            Token::Open => "(".into(),
            Token::Close => ")".into(),
            Token::Or => "||".into(),
        }
    }
}

fn tokenize(s: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            _ if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Token::Open);
                i += 1;
            }
            ')' => {
                out.push(Token::Close);
                i += 1;
            }
            ',' => {
                out.push(Token::Comma);
                i += 1;
            }
            '.' => {
                out.push(Token::Dot);
                i += 1;
            }
            '|' if chars.get(i + 1) == Some(&'|') => {
                out.push(Token::Or);
                i += 2;
            }
            '&' if chars.get(i + 1) == Some(&'&') => {
                out.push(Token::Op("_&&_".into()));
                i += 2;
            }
            '\'' | '"' => {
                let quote = c;
                let mut j = i + 1;
                let mut lit = String::new();
                while j < chars.len() && chars[j] != quote {
                    if chars[j] == '\\' && j + 1 < chars.len() {
                        j += 1;
                    }
                    lit.push(chars[j]);
                    j += 1;
                }
                if j >= chars.len() {
                    return Err("CEL parse error: Syntax error: token recognition error".into());
                }
                out.push(Token::Str(lit));
                i = j + 1;
            }
            _ if c.is_ascii_alphabetic() || c == '_' => {
                let mut j = i;
                while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                let word: String = chars[i..j].iter().collect();
                out.push(match word.as_str() {
                    "true" | "false" | "null" => Token::Other(word),
                    _ => Token::Ident(word),
                });
                i = j;
            }
            _ if c.is_ascii_digit() => {
                let mut j = i;
                while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '.') {
                    j += 1;
                }
                out.push(Token::Other(chars[i..j].iter().collect()));
                i = j;
            }
            _ => {
                let op: String = chars[i..=i].iter().collect();
                out.push(Token::Op(op));
                i += 1;
            }
        }
    }
    Ok(out)
}

/// The part of CEL's syntax tree the selector can hold.
#[derive(Debug, Clone)]
enum Ast {
    Call(String, Vec<Ast>),
    Path(String),
    Str(String),
    Other(String),
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn unexpected(&self) -> String {
        match self.peek() {
            Some(t) => format!(
                "CEL parse error: Syntax error: mismatched input '{}'",
                t.text()
            ),
            None => "CEL parse error: Syntax error: mismatched input '<EOF>'".into(),
        }
    }

    fn or_expr(&mut self) -> Result<Ast, String> {
        let mut left = self.primary()?;
        while self.peek() == Some(&Token::Or) {
            self.at += 1;
            let right = self.primary()?;
            left = Ast::Call("_||_".into(), vec![left, right]);
        }
        if let Some(Token::Op(op)) = self.peek().cloned() {
            // An operator CEL parses but the selector refuses: the walk names it.
            self.at += 1;
            let right = self.primary()?;
            left = Ast::Call(op, vec![left, right]);
        }
        Ok(left)
    }

    fn primary(&mut self) -> Result<Ast, String> {
        match self.peek().cloned() {
            Some(Token::Open) => {
                self.at += 1;
                let inner = self.or_expr()?;
                if self.peek() != Some(&Token::Close) {
                    return Err(self.unexpected());
                }
                self.at += 1;
                Ok(inner)
            }
            Some(Token::Str(s)) => {
                self.at += 1;
                Ok(Ast::Str(s))
            }
            Some(Token::Other(s)) => {
                self.at += 1;
                Ok(Ast::Other(s))
            }
            Some(Token::Ident(first)) => {
                self.at += 1;
                let mut path = first;
                while self.peek() == Some(&Token::Dot) {
                    self.at += 1;
                    match self.peek().cloned() {
                        Some(Token::Ident(next)) => {
                            self.at += 1;
                            path = format!("{path}.{next}");
                        }
                        _ => return Err(self.unexpected()),
                    }
                }
                if self.peek() != Some(&Token::Open) {
                    return Ok(Ast::Path(path));
                }
                self.at += 1;
                let mut args = Vec::new();
                if self.peek() == Some(&Token::Close) {
                    self.at += 1;
                } else {
                    loop {
                        args.push(self.or_expr()?);
                        match self.peek() {
                            Some(Token::Comma) => self.at += 1,
                            Some(Token::Close) => {
                                self.at += 1;
                                break;
                            }
                            _ => return Err(self.unexpected()),
                        }
                    }
                }
                // A member call (`a.b(...)`) is function `b` in CEL's tree.
                let name = path.rsplit('.').next().unwrap_or(&path).to_string();
                Ok(Ast::Call(name, args))
            }
            _ => Err(self.unexpected()),
        }
    }
}

/// CEL's expression kinds as kube-apiserver's messages print them: cel-go's `ast.ExprKind`
/// has no `String`, so the number (call 1, identifier 3, literal 5, select 7).
fn kind(a: &Ast) -> u8 {
    match a {
        Ast::Call(..) => 1,
        Ast::Path(p) if p.contains('.') => 7,
        Ast::Path(_) => 3,
        Ast::Str(_) | Ast::Other(_) => 5,
    }
}

fn walk(a: &Ast) -> Result<Vec<Requirement>, String> {
    match a {
        Ast::Call(name, args) if name == "_||_" => {
            let mut left = walk(&args[0])?;
            left.extend(walk(&args[1])?);
            Ok(left)
        }
        Ast::Call(name, args) if name == "shardRange" => Ok(vec![shard_range(args)?]),
        Ast::Call(name, _) => Err(format!(
            "unsupported function {name:?}; only shardRange() and || are allowed"
        )),
        other => Err(format!(
            "unexpected expression kind {}; expected shardRange() call or || operator",
            kind(other)
        )),
    }
}

fn shard_range(args: &[Ast]) -> Result<Requirement, String> {
    if args.len() != 3 {
        return Err(format!(
            "shardRange() requires exactly 3 arguments, got {}",
            args.len()
        ));
    }
    let key = match &args[0] {
        Ast::Path(p) => p.clone(),
        other => {
            return Err(format!(
                "shardRange() first argument: expected field path (e.g. object.metadata.uid), got expression kind {}",
                kind(other)
            ));
        }
    };
    if !matches!(
        key.as_str(),
        "object.metadata.uid" | "object.metadata.namespace"
    ) {
        return Err(format!(
            "unsupported field path {key:?}; supported: object.metadata.uid, object.metadata.namespace"
        ));
    }
    let start = hex_literal(&args[1], "hexStart")?;
    let end = hex_literal(&args[2], "hexEnd")?;
    if !hex_less(&start, &end) {
        return Err(format!(
            "shard range start {start} must be less than end {end}"
        ));
    }
    Ok(Requirement { key, start, end })
}

fn hex_literal(a: &Ast, name: &str) -> Result<String, String> {
    let s = match a {
        Ast::Str(s) => s,
        Ast::Other(lit) => {
            let go_type = if lit == "null" {
                "structpb.NullValue"
            } else if lit.contains('.') {
                "float64"
            } else if lit == "true" || lit == "false" {
                "bool"
            } else if lit.ends_with('u') {
                "uint64"
            } else {
                "int64"
            };
            return Err(format!("{name} must be a string literal, got {go_type}"));
        }
        other => {
            return Err(format!(
                "{name} must be a string literal (e.g. '0xff'), got expression kind {}",
                kind(other)
            ));
        }
    };
    let Some(hex) = s.strip_prefix("0x") else {
        return Err(format!("{name} must have '0x' prefix, got {s:?}"));
    };
    if hex.is_empty() {
        return Err(format!("{name}: hex value is required after '0x'"));
    }
    if hex.len() > 17 {
        return Err(format!(
            "{name}: hex value too long ({} chars, max 17): {hex:?}",
            hex.len()
        ));
    }
    if let Some(c) = hex
        .chars()
        .find(|c| !c.is_ascii_digit() && !('a'..='f').contains(c))
    {
        return Err(format!(
            "{name}: invalid hex character {:?} in {s:?}",
            c.to_string()
        ));
    }
    if hex.len() == 17 {
        if s != "0x10000000000000000" {
            return Err(format!(
                "{name}: 17-digit hex value must be '0x10000000000000000' (2^64), got {s:?}"
            ));
        }
    } else if hex.len() != 16 {
        let padded = format!("0x{}{hex}", "0".repeat(16 - hex.len()));
        return Err(format!(
            "{name} must be a 0x-prefixed 16-digit hex value, got {s:?} (did you mean {padded:?}?)"
        ));
    }
    Ok(s.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HALF: &str =
        "shardRange(object.metadata.uid, '0x0000000000000000', '0x8000000000000000')";

    #[test]
    fn accepts_ranges_joined_by_or_and_prints_them_canonically() {
        let s = ShardSelector::parse(
            "( shardRange(object.metadata.uid,\"0x0000000000000000\",'0x4000000000000000') ) ||shardRange(object.metadata.uid, '0xc000000000000000', '0x10000000000000000')",
        )
        .unwrap();
        assert_eq!(
            s.canonical(),
            "shardRange(object.metadata.uid, '0x0000000000000000', '0x4000000000000000') || shardRange(object.metadata.uid, '0xc000000000000000', '0x10000000000000000')"
        );
        assert_eq!(ShardSelector::parse(HALF).unwrap().canonical(), HALF);
    }

    #[test]
    fn matches_by_the_fnv1a_hash_of_the_field() {
        let obj = json!({"metadata": {"uid": "a", "namespace": "team-a"}});
        // fnv1a64("a") = 0xaf63dc4c8601ec8c: the upper half.
        assert!(!ShardSelector::parse(HALF).unwrap().matches(&obj));
        assert!(
            ShardSelector::parse(
                "shardRange(object.metadata.uid, '0xaf63dc4c8601ec8c', '0xaf63dc4c8601ec8d')"
            )
            .unwrap()
            .matches(&obj)
        );
        let h = format!("0x{:016x}", fnv1a64(b"team-a"));
        let ns = format!("shardRange(object.metadata.namespace, '{h}', '0x10000000000000000')");
        assert!(ShardSelector::parse(&ns).unwrap().matches(&obj));
    }

    #[test]
    fn refuses_what_kube_apiserver_refuses_with_its_messages() {
        let cases = [
            (
                "",
                "empty shard selector is not allowed; omit the parameter for unfiltered lists",
            ),
            (
                "shardRange(object.metadata.name, '0x0000000000000000', '0x8000000000000000')",
                "unsupported field path \"object.metadata.name\"; supported: object.metadata.uid, object.metadata.namespace",
            ),
            (
                "shardRange(object.metadata.uid, '0x0', '0x8000000000000000')",
                "hexStart must be a 0x-prefixed 16-digit hex value, got \"0x0\" (did you mean \"0x0000000000000000\"?)",
            ),
            (
                "shardRange(object.metadata.uid, '0000000000000000', '0x8000000000000000')",
                "hexStart must have '0x' prefix, got \"0000000000000000\"",
            ),
            (
                "shardRange(object.metadata.uid, '0x8000000000000000', '0x8000000000000000')",
                "shard range start 0x8000000000000000 must be less than end 0x8000000000000000",
            ),
            (
                "shardRange(object.metadata.uid, '0x0000000000000000', '0x20000000000000000')",
                "hexEnd: 17-digit hex value must be '0x10000000000000000' (2^64), got \"0x20000000000000000\"",
            ),
            (
                "shardRange(object.metadata.uid, '0x000000000000000G', '0x8000000000000000')",
                "hexStart: invalid hex character \"G\" in \"0x000000000000000G\"",
            ),
            (
                "shardRange(object.metadata.uid, '0x0000000000000000')",
                "shardRange() requires exactly 3 arguments, got 2",
            ),
            (
                "shardRange(object.metadata.uid, 0, '0x8000000000000000')",
                "hexStart must be a string literal, got int64",
            ),
            (
                "labels(object.metadata.uid)",
                "unsupported function \"labels\"; only shardRange() and || are allowed",
            ),
            (
                "shardRange(object.metadata.uid, '0x0000000000000000', '0x8000000000000000') && shardRange(object.metadata.uid, '0x0000000000000000', '0x8000000000000000')",
                "unsupported function \"_&&_\"; only shardRange() and || are allowed",
            ),
            (
                "shardRange(object.metadata.uid, '0x0000000000000000', '0x8000000000000000') || shardRange(object.metadata.namespace, '0x8000000000000000', '0x10000000000000000')",
                "all shard ranges must use the same field, got \"object.metadata.uid\" and \"object.metadata.namespace\"",
            ),
        ];
        for (expr, message) in cases {
            assert_eq!(ShardSelector::parse(expr).unwrap_err(), message, "{expr}");
        }
        assert!(
            ShardSelector::parse("shardRange(")
                .unwrap_err()
                .starts_with("CEL parse error: ")
        );
    }
}
