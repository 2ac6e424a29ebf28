//! Raw GETs through a `kube::Client` that show the response's encoding: for the tests of what
//! crosses the wire (gzip, the `drop` parameter).

use std::io::Read;

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

    /// The decoded body's lines (watch events) as JSON.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("a JSON event"))
            .collect()
    }
}

/// GETs `path` with extra `headers`; the answer must be a success.
pub async fn get_encoded(client: &kube::Client, path: &str, headers: &[(&str, &str)]) -> Encoded {
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
    let wire = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    let (mut body, mut members) = (Vec::new(), 0);
    if encoding.as_deref() == Some("gzip") {
        let mut rest = &wire[..];
        while !rest.is_empty() {
            let mut member = flate2::bufread::GzDecoder::new(rest);
            member.read_to_end(&mut body).expect("a valid gzip member");
            rest = member.into_inner();
            members += 1;
        }
    } else {
        body = wire.clone();
    }
    Encoded {
        encoding,
        wire,
        body,
        members,
    }
}
