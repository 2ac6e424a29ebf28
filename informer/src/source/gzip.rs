//! Incremental gzip decoding of response bodies, list and watch alike.
//!
//! kube-apiserver compresses a response when the client sends `Accept-Encoding: gzip`
//! (`APIResponseCompression`, on by default): a list larger than 128 KiB comes back as one gzip
//! member, and since 1.37 (`WatchListCompression`) a streaming list's watch body comes back as
//! **one gzip member per flush**, that is, one member per event or few. A decoder that stops
//! after the first member (what kube-rs met in kube-rs#2079, after which it turned gzip off on
//! every watch) sees a watch that delivers one event and then goes silent.
//!
//! [`Gunzip`] decodes any number of concatenated members, fed in chunks as they arrive with
//! member, header and trailer boundaries anywhere in them, and never expands more than
//! [`STEP`] compressed bytes between two looks at the output: a small chunk that inflates to
//! gigabytes (a gzip bomb) cannot get past the caller's size limit before the caller sees it.

use std::io::{self, Write};

use bytes::{Bytes, BytesMut};
use flate2::write::MultiGzDecoder;

/// Compressed bytes decoded between two checks of the output's size. Deflate expands at most
/// about 1,032 times, so one step adds at most about 4 MiB to the output.
pub(crate) const STEP: usize = 4 * 1024;

/// The decoding state of one gzip-encoded body.
pub(crate) struct Gunzip {
    inner: MultiGzDecoder<Vec<u8>>,
    /// Compressed bytes received and not yet decoded.
    pending: Bytes,
    /// Compressed bytes received in all.
    wire_bytes: u64,
    /// Whether any compressed byte has been decoded (an empty body has no member to finish).
    started: bool,
}

impl Gunzip {
    pub(crate) fn new() -> Self {
        Gunzip {
            inner: MultiGzDecoder::new(Vec::new()),
            pending: Bytes::new(),
            wire_bytes: 0,
            started: false,
        }
    }

    /// Compressed bytes received so far.
    pub(crate) fn wire_bytes(&self) -> u64 {
        self.wire_bytes
    }

    /// Whether compressed input is waiting to be decoded.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Takes the next compressed chunk; decode it with [`decode_into`](Self::decode_into).
    pub(crate) fn push(&mut self, chunk: Bytes) {
        self.wire_bytes += chunk.len() as u64;
        if self.pending.is_empty() {
            self.pending = chunk;
        } else {
            let mut joined = BytesMut::with_capacity(self.pending.len() + chunk.len());
            joined.extend_from_slice(&self.pending);
            joined.extend_from_slice(&chunk);
            self.pending = joined.freeze();
        }
    }

    /// Decodes pending input into `out`, [`STEP`] compressed bytes at a time, until the input is
    /// used up or `out` holds more than `stop_above` bytes (the rest stays pending). On corrupt
    /// input, what was decoded before it is in `out` and the error is returned.
    pub(crate) fn decode_into(&mut self, out: &mut BytesMut, stop_above: usize) -> io::Result<()> {
        while !self.pending.is_empty() && out.len() <= stop_above {
            let step = self.pending.split_to(STEP.min(self.pending.len()));
            self.started = true;
            let written = self
                .inner
                .write_all(&step)
                .and_then(|()| self.inner.flush());
            // What was decoded before a failure is good data (earlier members, or the start of
            // this one): hand it over either way.
            let decoded = self.inner.get_mut();
            out.extend_from_slice(decoded);
            decoded.clear();
            written?;
        }
        Ok(())
    }

    /// Ends the body: everything pending is decoded into `out`, then the last member must be
    /// complete. A last member that cannot be completed (the body was cut inside it, or its
    /// trailer does not check out, which flate2 does not tell apart) is an
    /// [`io::ErrorKind::UnexpectedEof`] error; corrupt data met earlier fails in
    /// [`decode_into`](Self::decode_into) with the decoder's own error.
    pub(crate) fn finish_into(mut self, out: &mut BytesMut) -> io::Result<()> {
        self.decode_into(out, usize::MAX)?;
        if !self.started {
            return Ok(());
        }
        let rest = self.inner.finish().map_err(|e| {
            if e.kind() == io::ErrorKind::InvalidInput || e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "gzip body ends inside a member",
                )
            } else {
                e
            }
        })?;
        out.extend_from_slice(&rest);
        Ok(())
    }
}

/// Whether a response's `Content-Encoding` is gzip; `Ok(false)` for none or `identity`, an
/// error naming the encoding for anything else (the request asked for gzip or nothing).
pub(crate) fn is_gzip(headers: &http::HeaderMap) -> Result<bool, String> {
    let Some(value) = headers.get(http::header::CONTENT_ENCODING) else {
        return Ok(false);
    };
    let value = value
        .to_str()
        .map_err(|_| "a Content-Encoding that is not ASCII".to_string())?
        .trim();
    if value.eq_ignore_ascii_case("gzip") || value.eq_ignore_ascii_case("x-gzip") {
        Ok(true)
    } else if value.is_empty() || value.eq_ignore_ascii_case("identity") {
        Ok(false)
    } else {
        Err(format!("unsupported Content-Encoding {value:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;

    fn member(data: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn decode_in_chunks(body: &[u8], chunk: usize) -> io::Result<Vec<u8>> {
        let mut gz = Gunzip::new();
        let mut out = BytesMut::new();
        for piece in body.chunks(chunk.max(1)) {
            gz.push(Bytes::copy_from_slice(piece));
            gz.decode_into(&mut out, usize::MAX)?;
        }
        gz.finish_into(&mut out)?;
        Ok(out.to_vec())
    }

    #[test]
    fn many_members_decode_whatever_the_chunk_boundaries() {
        let events: Vec<Vec<u8>> = (0..40)
            .map(|i| format!("{{\"type\":\"ADDED\",\"object\":{{\"n\":{i}}}}}\n").into_bytes())
            .collect();
        let body: Vec<u8> = events.iter().flat_map(|e| member(e)).collect();
        let want: Vec<u8> = events.concat();
        for chunk in [1, 2, 3, 7, 10, 17, 18, 19, 64, 1000, body.len()] {
            assert_eq!(
                decode_in_chunks(&body, chunk).unwrap(),
                want,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn one_large_member_decodes_and_counts_its_wire_bytes() {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("{i},").into_bytes())
            .collect();
        let body = member(&data);
        let mut gz = Gunzip::new();
        let mut out = BytesMut::new();
        gz.push(Bytes::from(body.clone()));
        gz.decode_into(&mut out, usize::MAX).unwrap();
        assert_eq!(gz.wire_bytes(), body.len() as u64);
        gz.finish_into(&mut out).unwrap();
        assert_eq!(&out[..], &data[..]);
    }

    #[test]
    fn decoding_stops_near_the_limit_and_resumes() {
        let data = vec![b'a'; 8 * 1024 * 1024];
        let body = member(&data);
        let mut gz = Gunzip::new();
        let mut out = BytesMut::new();
        gz.push(Bytes::from(body));
        gz.decode_into(&mut out, 64 * 1024).unwrap();
        assert!(gz.has_pending(), "a highly compressible body stops early");
        assert!(
            out.len() < 64 * 1024 + STEP * 1100,
            "one step expands boundedly"
        );
        out.clear();
        gz.decode_into(&mut out, usize::MAX).unwrap();
        gz.finish_into(&mut out).unwrap();
        assert!(!out.is_empty());
    }

    #[test]
    fn a_body_cut_inside_a_member_is_unexpected_eof() {
        let mut body = member(b"{\"a\":1}\n");
        body.extend_from_slice(&member(b"{\"b\":2}\n"));
        let cut = body.len() - 5;
        let err = decode_in_chunks(&body[..cut], 4).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn corrupt_data_is_an_error_not_a_panic() {
        let mut body = member(b"{\"a\":1}\n");
        let n = body.len();
        body[n - 6] ^= 0xff; // the checksum
        assert!(decode_in_chunks(&body, 3).is_err());
        assert!(decode_in_chunks(b"not gzip at all", 4).is_err());
    }

    #[test]
    fn an_empty_body_is_empty() {
        assert_eq!(decode_in_chunks(b"", 4).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn content_encoding_is_read_strictly() {
        let mut h = http::HeaderMap::new();
        assert_eq!(is_gzip(&h), Ok(false));
        h.insert(http::header::CONTENT_ENCODING, "gzip".parse().unwrap());
        assert_eq!(is_gzip(&h), Ok(true));
        h.insert(http::header::CONTENT_ENCODING, "identity".parse().unwrap());
        assert_eq!(is_gzip(&h), Ok(false));
        h.insert(http::header::CONTENT_ENCODING, "br".parse().unwrap());
        assert!(is_gzip(&h).unwrap_err().contains("br"));
    }
}
