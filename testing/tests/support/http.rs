//! Raw GETs through a `kube::Client` that show the response's encoding: for the tests of what
//! crosses the wire (gzip, the `drop` parameter).

use std::io::Write;

use futures::StreamExt;
use http_body_util::BodyExt;

/// A response as sent, and decoded.
pub struct Encoded {
    /// Its `Content-Encoding`, if any.
    pub encoding: Option<String>,
    /// The body as sent.
    pub wire: Vec<u8>,
    /// The body decoded, member by member when gzip-encoded.
    pub body: Vec<u8>,
    /// How many gzip members the body held (0: not compressed).
    pub members: usize,
}

impl Encoded {
    /// The decoded body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// The decoded body's complete lines (watch events) as JSON.
    pub fn events(&self) -> Vec<serde_json::Value> {
        let complete =
            self.body.len() - self.body.iter().rev().take_while(|b| **b != b'\n').count();
        self.body[..complete]
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("a JSON event"))
            .collect()
    }
}

/// GETs `path` with extra `headers`; the answer must be a success. The whole body is read.
pub async fn get_encoded(client: &kube::Client, path: &str, headers: &[(&str, &str)]) -> Encoded {
    get_encoded_until(client, path, headers, None).await
}

/// The initial-events-end annotation that closes a streaming list's initial events.
pub const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// GETs `path` like [`get_encoded`], but stops reading once the decoded body holds `until` (for a
/// streaming list: [`INITIAL_EVENTS_END`]), so the test does not wait for a server timeout, nor
/// depend on one being long enough. `members` counts the complete members read.
pub async fn get_encoded_until(
    client: &kube::Client,
    path: &str,
    headers: &[(&str, &str)],
    until: Option<&str>,
) -> Encoded {
    let mut req = http::Request::get(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .send(req.body(Vec::new()).expect("request").map(Into::into))
        .await
        .expect("GET");
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    let encoding = resp
        .headers()
        .get(http::header::CONTENT_ENCODING)
        .map(|v| v.to_str().expect("ASCII header").to_owned());
    let gzip = encoding.as_deref() == Some("gzip");
    let mut decoded = flate2::write::MultiGzDecoder::new(Vec::new());
    let mut wire = Vec::new();
    let mut data = resp.into_body().into_data_stream();
    while let Some(chunk) = data.next().await {
        let chunk = chunk.expect("body");
        wire.extend_from_slice(&chunk);
        if gzip {
            decoded.write_all(&chunk).expect("a valid gzip body");
            decoded.flush().expect("a valid gzip body");
        }
        let seen = if gzip { decoded.get_ref() } else { &wire };
        let found =
            until.is_some_and(|needle| seen.windows(needle.len()).any(|w| w == needle.as_bytes()));
        // Stop at the end of the member that holds it, so every member read is complete.
        if found && (!gzip || members_of(&wire).1) {
            break;
        }
    }
    let body = if gzip {
        decoded.get_ref().clone()
    } else {
        wire.clone()
    };
    let members = if gzip {
        let (members, complete) = members_of(&wire);
        assert!(complete, "{path}: the body ends inside a gzip member");
        members
    } else {
        0
    };
    Encoded {
        encoding,
        wire,
        body,
        members,
    }
}

/// How many gzip members `wire` holds, and whether it ends where a member ends.
fn members_of(wire: &[u8]) -> (usize, bool) {
    let mut members = 0;
    let mut rest = wire;
    while !rest.is_empty() {
        let mut member = flate2::bufread::GzDecoder::new(rest);
        if std::io::copy(&mut member, &mut std::io::sink()).is_err() {
            return (members, false);
        }
        rest = member.into_inner();
        members += 1;
    }
    (members, true)
}
