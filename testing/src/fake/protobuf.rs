//! Decoding of the protobuf request bodies kubectl's typed commands send.
//!
//! `kubectl create configmap|secret|namespace|serviceaccount` encode the new object as
//! `application/vnd.kubernetes.protobuf` and do not fall back to JSON when refused. The fake
//! stores JSON, so it decodes these bodies itself: the `k8s\0` magic, the `runtime.Unknown`
//! envelope (type meta and raw bytes), then the object by a small field table per kind, mirroring
//! the field numbers of Kubernetes' `generated.proto`. Only the kinds above are known; any other
//! kind, and any field the table does not know, is refused with 415 rather than dropped.
//!
//! Go's generated marshallers write every non-pointer field, so empty strings, zero integers and
//! an all-zero creation timestamp arrive on the wire; they mean "unset" and are left out of the
//! JSON.

use serde_json::{Map, Value};

use super::status::ApiError;

/// The magic prefix of Kubernetes' protobuf encoding.
const MAGIC: &[u8] = b"k8s\0";

fn unsupported(why: impl Into<String>) -> ApiError {
    ApiError::new(
        415,
        "UnsupportedMediaType",
        format!(
            "the body of the request was in an unknown format - {}; accepted media types include: application/json",
            why.into()
        ),
    )
}

fn malformed() -> ApiError {
    ApiError::bad_request("invalid protobuf body")
}

/// One wire value.
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ApiError> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.buf.split_first().ok_or_else(malformed)?;
            self.buf = rest;
            out |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err(malformed())
    }

    /// The next (field number, value), or `None` at the end.
    fn next(&mut self) -> Result<Option<(u64, Wire<'a>)>, ApiError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let wire = match tag & 7 {
            0 => Wire::Varint(self.varint()?),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| malformed())?;
                if len > self.buf.len() {
                    return Err(malformed());
                }
                let (bytes, rest) = self.buf.split_at(len);
                self.buf = rest;
                Wire::Bytes(bytes)
            }
            other => return Err(unsupported(format!("protobuf wire type {other}"))),
        };
        Ok(Some((tag >> 3, wire)))
    }
}

/// How one field is decoded.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Bool,
    Int,
    RepeatedStr,
    MapStr,
    /// `map<string, bytes>`, values as base64.
    MapBytes,
    Message(&'static [Field]),
    RepeatedMessage(&'static [Field]),
    /// `metav1.Time`; only the zero time (unset) is accepted.
    ZeroTime,
}

/// (field number, JSON name, kind).
type Field = (u64, &'static str, Kind);

const OWNER_REFERENCE: &[Field] = &[
    (5, "apiVersion", Kind::Str),
    (1, "kind", Kind::Str),
    (3, "name", Kind::Str),
    (4, "uid", Kind::Str),
    (6, "controller", Kind::Bool),
    (7, "blockOwnerDeletion", Kind::Bool),
];

const OBJECT_META: &[Field] = &[
    (1, "name", Kind::Str),
    (2, "generateName", Kind::Str),
    (3, "namespace", Kind::Str),
    (4, "selfLink", Kind::Str),
    (5, "uid", Kind::Str),
    (6, "resourceVersion", Kind::Str),
    (7, "generation", Kind::Int),
    (8, "creationTimestamp", Kind::ZeroTime),
    (11, "labels", Kind::MapStr),
    (12, "annotations", Kind::MapStr),
    (
        13,
        "ownerReferences",
        Kind::RepeatedMessage(OWNER_REFERENCE),
    ),
    (14, "finalizers", Kind::RepeatedStr),
];

const CONFIG_MAP: &[Field] = &[
    (1, "metadata", Kind::Message(OBJECT_META)),
    (2, "data", Kind::MapStr),
    (3, "binaryData", Kind::MapBytes),
    (4, "immutable", Kind::Bool),
];

const SECRET: &[Field] = &[
    (1, "metadata", Kind::Message(OBJECT_META)),
    (2, "data", Kind::MapBytes),
    (3, "type", Kind::Str),
    (4, "stringData", Kind::MapStr),
    (5, "immutable", Kind::Bool),
];

const NAMESPACE_SPEC: &[Field] = &[(1, "finalizers", Kind::RepeatedStr)];
const NAMESPACE_STATUS: &[Field] = &[(1, "phase", Kind::Str)];
const NAMESPACE: &[Field] = &[
    (1, "metadata", Kind::Message(OBJECT_META)),
    (2, "spec", Kind::Message(NAMESPACE_SPEC)),
    (3, "status", Kind::Message(NAMESPACE_STATUS)),
];

const OBJECT_REFERENCE: &[Field] = &[
    (1, "kind", Kind::Str),
    (2, "namespace", Kind::Str),
    (3, "name", Kind::Str),
    (4, "uid", Kind::Str),
    (5, "apiVersion", Kind::Str),
    (6, "resourceVersion", Kind::Str),
    (7, "fieldPath", Kind::Str),
];
const LOCAL_OBJECT_REFERENCE: &[Field] = &[(1, "name", Kind::Str)];
const SERVICE_ACCOUNT: &[Field] = &[
    (1, "metadata", Kind::Message(OBJECT_META)),
    (2, "secrets", Kind::RepeatedMessage(OBJECT_REFERENCE)),
    (
        3,
        "imagePullSecrets",
        Kind::RepeatedMessage(LOCAL_OBJECT_REFERENCE),
    ),
    (4, "automountServiceAccountToken", Kind::Bool),
];

const TYPE_META: &[Field] = &[(1, "apiVersion", Kind::Str), (2, "kind", Kind::Str)];

/// Standard base64 with padding (Secret data in JSON).
pub(super) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn utf8(bytes: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| malformed())
}

/// A `map<string, V>` entry: key 1, value 2.
fn map_entry(bytes: &[u8], value_as_base64: bool) -> Result<(String, String), ApiError> {
    let mut r = Reader { buf: bytes };
    let (mut key, mut value) = (String::new(), String::new());
    while let Some((n, w)) = r.next()? {
        match (n, w) {
            (1, Wire::Bytes(b)) => key = utf8(b)?,
            (2, Wire::Bytes(b)) if value_as_base64 => value = base64(b),
            (2, Wire::Bytes(b)) => value = utf8(b)?,
            _ => return Err(malformed()),
        }
    }
    Ok((key, value))
}

fn message(bytes: &[u8], fields: &'static [Field]) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    let mut r = Reader { buf: bytes };
    while let Some((n, wire)) = r.next()? {
        let &(_, name, kind) = fields
            .iter()
            .find(|(f, _, _)| *f == n)
            .ok_or_else(|| unsupported(format!("protobuf field {n} is not known to the fake")))?;
        let value = match (kind, wire) {
            (Kind::Str, Wire::Bytes(b)) => {
                Some(utf8(b)?).filter(|s| !s.is_empty()).map(Value::String)
            }
            (Kind::Bool, Wire::Varint(v)) => Some(Value::Bool(v != 0)),
            (Kind::Int, Wire::Varint(v)) => (v != 0).then(|| Value::from(v)),
            (Kind::Message(sub), Wire::Bytes(b)) => Some(Value::Object(message(b, sub)?)),
            (Kind::ZeroTime, Wire::Bytes(b)) => {
                let mut t = Reader { buf: b };
                while let Some((_, w)) = t.next()? {
                    if !matches!(w, Wire::Varint(0)) {
                        return Err(unsupported("protobuf timestamps other than unset"));
                    }
                }
                None
            }
            (Kind::RepeatedStr, Wire::Bytes(b)) => {
                push(&mut out, name, Value::String(utf8(b)?));
                None
            }
            (Kind::RepeatedMessage(sub), Wire::Bytes(b)) => {
                push(&mut out, name, Value::Object(message(b, sub)?));
                None
            }
            (Kind::MapStr | Kind::MapBytes, Wire::Bytes(b)) => {
                let (k, v) = map_entry(b, matches!(kind, Kind::MapBytes))?;
                let map = out.entry(name).or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(m) = map {
                    m.insert(k, Value::String(v));
                }
                None
            }
            _ => return Err(malformed()),
        };
        if let Some(v) = value {
            out.insert(name.to_string(), v);
        }
    }
    Ok(out)
}

fn push(out: &mut Map<String, Value>, name: &str, v: Value) {
    let arr = out.entry(name).or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(a) = arr {
        a.push(v);
    }
}

/// Decodes a `application/vnd.kubernetes.protobuf` body into the object's JSON.
pub fn decode_object(body: &[u8]) -> Result<Value, ApiError> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| unsupported("a protobuf body without the k8s magic prefix"))?;
    let mut r = Reader { buf: rest };
    let (mut type_meta, mut raw) = (Map::new(), None);
    while let Some((n, wire)) = r.next()? {
        match (n, wire) {
            (1, Wire::Bytes(b)) => type_meta = message(b, TYPE_META)?,
            (2, Wire::Bytes(b)) => raw = Some(b),
            (3 | 4, Wire::Bytes([])) => {}
            (3 | 4, Wire::Bytes(_)) => {
                return Err(unsupported("protobuf bodies with a content encoding"));
            }
            _ => return Err(malformed()),
        }
    }
    let api_version = type_meta.get("apiVersion").and_then(Value::as_str);
    let kind = type_meta.get("kind").and_then(Value::as_str);
    let fields = match (api_version, kind) {
        (Some("v1"), Some("ConfigMap")) => CONFIG_MAP,
        (Some("v1"), Some("Secret")) => SECRET,
        (Some("v1"), Some("Namespace")) => NAMESPACE,
        (Some("v1"), Some("ServiceAccount")) => SERVICE_ACCOUNT,
        _ => {
            return Err(unsupported(format!(
                "protobuf is decoded for v1 ConfigMap, Secret, Namespace and ServiceAccount only, not {} {}",
                api_version.unwrap_or("?"),
                kind.unwrap_or("?")
            )));
        }
    };
    let mut obj = message(raw.unwrap_or_default(), fields)?;
    obj.insert("apiVersion".into(), type_meta["apiVersion"].clone());
    obj.insert("kind".into(), type_meta["kind"].clone());
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What `kubectl create configmap demo --from-literal=a=b` (v1.32) sends.
    const KUBECTL_CONFIGMAP: &[u8] = &[
        0x6b, 0x38, 0x73, 0x00, 0x0a, 0x0f, 0x0a, 0x02, 0x76, 0x31, 0x12, 0x09, 0x43, 0x6f, 0x6e,
        0x66, 0x69, 0x67, 0x4d, 0x61, 0x70, 0x12, 0x1e, 0x0a, 0x14, 0x0a, 0x04, 0x64, 0x65, 0x6d,
        0x6f, 0x12, 0x00, 0x1a, 0x00, 0x22, 0x00, 0x2a, 0x00, 0x32, 0x00, 0x38, 0x00, 0x42, 0x00,
        0x12, 0x06, 0x0a, 0x01, 0x61, 0x12, 0x01, 0x62, 0x1a, 0x00, 0x22, 0x00,
    ];

    fn len_field(n: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![(n << 3) | 2, u8::try_from(bytes.len()).unwrap()];
        out.extend_from_slice(bytes);
        out
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let type_meta = [
            len_field(1, api_version.as_bytes()),
            len_field(2, kind.as_bytes()),
        ]
        .concat();
        [
            MAGIC.to_vec(),
            len_field(1, &type_meta),
            len_field(2, raw),
            len_field(3, b""),
            len_field(4, b""),
        ]
        .concat()
    }

    #[test]
    fn kubectls_configmap_body_decodes_to_its_json() {
        assert_eq!(
            decode_object(KUBECTL_CONFIGMAP).unwrap(),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "demo"}, "data": {"a": "b"}})
        );
    }

    #[test]
    fn secrets_carry_bytes_as_base64_and_repeated_fields_accumulate() {
        let meta = [
            len_field(1, b"s"),
            len_field(
                11,
                &[len_field(1, b"app").as_slice(), &len_field(2, b"web")].concat(),
            ),
            len_field(14, b"f1"),
            len_field(14, b"f2"),
        ]
        .concat();
        let raw = [
            len_field(1, &meta),
            len_field(
                2,
                &[len_field(1, b"k").as_slice(), &len_field(2, b"hello")].concat(),
            ),
            len_field(3, b"Opaque"),
        ]
        .concat();
        assert_eq!(
            decode_object(&envelope("v1", "Secret", &raw)).unwrap(),
            json!({
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": "s", "labels": {"app": "web"}, "finalizers": ["f1", "f2"]},
                "data": {"k": "aGVsbG8="},
            })
        );
    }

    #[test]
    fn unknown_kinds_fields_and_encodings_are_refused_not_dropped() {
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            ("no magic", b"{\"kind\":\"ConfigMap\"}".to_vec(), 415),
            (
                "unknown kind",
                envelope("apps/v1", "Deployment", &len_field(1, &len_field(1, b"d"))),
                415,
            ),
            (
                "unknown field",
                envelope("v1", "ConfigMap", &len_field(9, b"x")),
                415,
            ),
            (
                "non-zero timestamp",
                envelope(
                    "v1",
                    "ConfigMap",
                    &len_field(1, &len_field(8, &[0x08, 0x01])),
                ),
                415,
            ),
            (
                "truncated",
                KUBECTL_CONFIGMAP[..KUBECTL_CONFIGMAP.len() - 8].to_vec(),
                400,
            ),
        ];
        for (name, body, code) in cases {
            assert_eq!(decode_object(&body).unwrap_err().code, code, "{name}");
        }
    }

    #[test]
    fn base64_pads_like_the_standard_alphabet() {
        for (input, want) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
        ] {
            assert_eq!(base64(input), want);
        }
    }
}
