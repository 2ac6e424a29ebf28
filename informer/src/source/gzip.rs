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
//! It reads the members' headers and trailers (RFC 1952) itself around one raw-deflate state
//! that is reset, not rebuilt, between members: a streaming list of 30,000 objects is 30,000
//! members, and a decoder per member (what `flate2`'s `MultiGzDecoder` builds) allocates a
//! window and buffers for each.
//! Each member's CRC-32 and length are checked; corrupt data is an
//! [`io::ErrorKind::InvalidData`] error, a body that ends inside a member an
//! [`io::ErrorKind::UnexpectedEof`] one.

use std::io;

use bytes::{Bytes, BytesMut};
use flate2::{Crc, Decompress, FlushDecompress, Status};

/// Compressed bytes decoded between two checks of the output's size. Deflate expands at most
/// about 1,032 times, so one step adds at most about 4 MiB to the output.
pub(crate) const STEP: usize = 4 * 1024;

/// The longest member header accepted (its optional name, comment and extra field included).
const MAX_HEADER: usize = 64 * 1024;

/// Output produced per inflate call.
const SCRATCH: usize = 32 * 1024;

/// Where in a member the decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Between members, or inside a header (its bytes so far in `partial`).
    Header,
    /// Inside the deflate data.
    Body,
    /// Inside the 8-byte trailer (its bytes so far in `partial`).
    Trailer,
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("gzip: {what}"))
}

/// The length of the member header at the start of `h`: `Ok(None)` while incomplete, an error
/// for anything that is not a deflate-compressed gzip member.
fn header_len(h: &[u8]) -> io::Result<Option<usize>> {
    if h.first().is_some_and(|&b| b != 0x1f) || h.get(1).is_some_and(|&b| b != 0x8b) {
        return Err(invalid("not a gzip member"));
    }
    if h.get(2).is_some_and(|&b| b != 8) {
        return Err(invalid("compression method is not deflate"));
    }
    if h.len() < 10 {
        return Ok(None);
    }
    let flags = h[3];
    if flags & 0xe0 != 0 {
        return Err(invalid("reserved header flags set"));
    }
    let mut at = 10;
    if flags & 0x04 != 0 {
        let Some(xlen) = h.get(at..at + 2) else {
            return Ok(None);
        };
        at += 2 + usize::from(u16::from_le_bytes([xlen[0], xlen[1]]));
        if h.len() < at {
            return Ok(None);
        }
    }
    for field in [0x08, 0x10] {
        if flags & field != 0 {
            match h[at..].iter().position(|&b| b == 0) {
                Some(end) => at += end + 1,
                None => return Ok(None),
            }
        }
    }
    if flags & 0x02 != 0 {
        if h.len() < at + 2 {
            return Ok(None);
        }
        let mut crc = Crc::new();
        crc.update(&h[..at]);
        if u16::from_le_bytes([h[at], h[at + 1]]) != (crc.sum() & 0xffff) as u16 {
            return Err(invalid("header checksum mismatch"));
        }
        at += 2;
    }
    Ok(Some(at))
}

/// The decoding state of one gzip-encoded body.
pub(crate) struct Gunzip {
    inflate: Decompress,
    crc: Crc,
    part: Part,
    /// The bytes of the header or trailer read so far.
    partial: Vec<u8>,
    /// Inflated bytes of the current call, before they are appended to the output.
    scratch: Vec<u8>,
    /// Compressed bytes received and not yet decoded.
    pending: Bytes,
    /// Compressed bytes received in all.
    wire_bytes: u64,
}

impl Gunzip {
    pub(crate) fn new() -> Self {
        Gunzip {
            inflate: Decompress::new(false),
            crc: Crc::new(),
            part: Part::Header,
            partial: Vec::new(),
            scratch: Vec::new(),
            pending: Bytes::new(),
            wire_bytes: 0,
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
            let mut input = &step[..];
            while !input.is_empty() {
                input = self.advance(input, out)?;
            }
        }
        Ok(())
    }

    /// Decodes from the start of `input` up to the end of the current part, and returns the rest.
    fn advance<'a>(&mut self, input: &'a [u8], out: &mut BytesMut) -> io::Result<&'a [u8]> {
        match self.part {
            Part::Header => {
                // Usually a whole header is in `input`: read it in place.
                if self.partial.is_empty()
                    && let Some(len) = header_len(input)?
                {
                    self.part = Part::Body;
                    return Ok(&input[len..]);
                }
                let seen = self.partial.len();
                self.partial.extend_from_slice(input);
                match header_len(&self.partial)? {
                    None if self.partial.len() > MAX_HEADER => Err(invalid("header too long")),
                    None => Ok(&[]),
                    Some(len) => {
                        self.partial.clear();
                        self.part = Part::Body;
                        Ok(&input[len - seen..])
                    }
                }
            }
            Part::Body => {
                self.scratch.clear();
                self.scratch.reserve(SCRATCH);
                let before = self.inflate.total_in();
                let status = self
                    .inflate
                    .decompress_vec(input, &mut self.scratch, FlushDecompress::None)
                    .map_err(|e| invalid(&format!("corrupt deflate data: {e}")))?;
                let used = (self.inflate.total_in() - before) as usize;
                self.crc.update(&self.scratch);
                out.extend_from_slice(&self.scratch);
                match status {
                    Status::StreamEnd => self.part = Part::Trailer,
                    _ if used == 0 && self.scratch.is_empty() => {
                        return Err(invalid("deflate data makes no progress"));
                    }
                    _ => {}
                }
                Ok(&input[used..])
            }
            Part::Trailer => {
                let take = (8 - self.partial.len()).min(input.len());
                self.partial.extend_from_slice(&input[..take]);
                if self.partial.len() == 8 {
                    let t = &self.partial;
                    let crc = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
                    let size = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
                    if crc != self.crc.sum() || size != self.crc.amount() {
                        return Err(invalid("member checksum or length mismatch"));
                    }
                    self.partial.clear();
                    self.crc.reset();
                    self.inflate.reset(false);
                    self.part = Part::Header;
                }
                Ok(&input[take..])
            }
        }
    }

    /// Ends the body: everything pending is decoded into `out`, then the body must end between
    /// members. A body that ends inside a member is an [`io::ErrorKind::UnexpectedEof`] error.
    pub(crate) fn finish_into(mut self, out: &mut BytesMut) -> io::Result<()> {
        self.decode_into(out, usize::MAX)?;
        if self.part == Part::Header && self.partial.is_empty() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "gzip body ends inside a member",
            ))
        }
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
    use flate2::write::GzEncoder;
    use flate2::{Compression, GzBuilder};
    use std::io::Write;

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
        assert_eq!(
            decode_in_chunks(&body, 3).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert_eq!(
            decode_in_chunks(b"not gzip at all", 4).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn optional_header_fields_are_skipped_and_the_header_checksum_checked() {
        let mut enc = GzBuilder::new()
            .filename("events.json")
            .comment("a comment")
            .extra(vec![1, 2, 3, 4])
            .write(Vec::new(), Compression::fast());
        enc.write_all(b"{\"a\":1}\n").unwrap();
        let body = enc.finish().unwrap();
        let mut twice = body.clone();
        twice.extend_from_slice(&body);
        for chunk in [1, 5, 100] {
            assert_eq!(
                decode_in_chunks(&twice, chunk).unwrap(),
                b"{\"a\":1}\n{\"a\":1}\n"
            );
        }
        // FHCRC: the low 16 bits of the header's CRC-32.
        let mut header = vec![0x1f, 0x8b, 8, 0x02, 0, 0, 0, 0, 0, 0xff];
        let mut crc = Crc::new();
        crc.update(&header);
        header.extend_from_slice(&((crc.sum() & 0xffff) as u16).to_le_bytes());
        let plain = member(b"x");
        let mut with_hcrc = header.clone();
        with_hcrc.extend_from_slice(&plain[10..]);
        assert_eq!(decode_in_chunks(&with_hcrc, 3).unwrap(), b"x");
        with_hcrc[10] ^= 1;
        assert_eq!(
            decode_in_chunks(&with_hcrc, 3).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn an_endless_header_is_refused() {
        let mut header = vec![0x1f, 0x8b, 8, 0x08, 0, 0, 0, 0, 0, 0xff];
        header.extend(std::iter::repeat_n(b'n', MAX_HEADER + 10));
        assert_eq!(
            decode_in_chunks(&header, 1000).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
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
