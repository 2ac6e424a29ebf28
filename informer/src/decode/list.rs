//! A list response decoded as its bytes arrive.
//!
//! A list of 100,000 Pods is half a gigabyte of JSON. Reading the whole body before decoding it
//! holds that half gigabyte next to the objects being built from it, and the decoding only
//! starts once the last byte has crossed the network. [`ListDecoder`] takes the body in chunks
//! of any size, finds where each element of `items` ends with a small resumable scanner (string
//! and escape state, nesting depth; each byte looked at once), and decodes every element the
//! moment its last byte arrives, straight into an `Arc<K>` with the [`Decoder`]'s skipping. What
//! it buffers is the element being received, never the body.
//!
//! The scanner only delimits values; their content is checked by serde_json as each is decoded
//! (an element that is not a `K` fails as [`DecodeError::ListItem`], naming its index and
//! offset). Structure outside the elements (the object's braces, keys, colons, commas, the
//! `items` array) is checked by the scanner and fails as [`DecodeError::Syntax`] with the byte
//! offset. Top-level fields other than `metadata` and `items` (`kind`, `apiVersion`) are
//! delimited and dropped unparsed.

use std::marker::PhantomData;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use serde::de::DeserializeOwned;

use super::seeds::ListMetaLite;
use super::skip::SkippingSeed;
use super::{DecodeError, Node};
use crate::source::{ListPage, Reuse};

const WHAT: &str = "list response";

/// Where the decoder is in the list object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Before the object's `{`.
    Open,
    /// After `{`: a key or `}`.
    FirstKey,
    /// After `,`: a key.
    Key,
    /// After a key: `:`.
    Colon(Field),
    /// After `:`: the value of a field other than `items`.
    Value(Field),
    /// After `"items":`: `[` or `null`.
    Items,
    /// After `[`: an element or `]`.
    FirstItem,
    /// After `,` in `items`: an element.
    Item,
    /// After an element: `,` or `]`.
    AfterItem,
    /// After a field's value: `,` or `}`.
    AfterValue,
    /// After the object's `}`: only whitespace.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Items,
    Metadata,
    Other,
}

/// The resumable scan of the value that starts at the front of the buffer.
#[derive(Debug, Default, Clone, Copy)]
struct Scan {
    /// Bytes of the value scanned so far.
    pos: usize,
    /// Open objects and arrays (0 while a scalar or before the first byte).
    depth: u32,
    in_string: bool,
    escaped: bool,
}

/// Decodes a list response (`{"kind":"PodList","metadata":{...},"items":[...]}`) from chunks of
/// its body, each element of `items` as soon as it is complete. From
/// [`Decoder::list_decoder`](super::Decoder::list_decoder).
///
/// ```
/// use k8s_openapi::api::core::v1::ConfigMap;
/// use reflex_informer::decode::Decoder;
///
/// let body = br#"{"kind":"ConfigMapList","metadata":{"resourceVersion":"7"},
///   "items":[{"metadata":{"name":"a"}},{"metadata":{"name":"b"}}]}"#;
/// let mut list = Decoder::default().list_decoder::<ConfigMap>();
/// for chunk in body.chunks(10) {
///     list.push(chunk)?;
/// }
/// assert_eq!(list.items_decoded(), 2);
/// let page = list.finish()?;
/// assert_eq!(page.resource_version, "7");
/// assert_eq!(page.items[1].metadata.name.as_deref(), Some("b"));
/// # Ok::<(), reflex_informer::decode::DecodeError>(())
/// ```
pub struct ListDecoder<K> {
    root: Arc<Node>,
    buf: BytesMut,
    /// Offset in the body of `buf[0]`.
    base: u64,
    place: Place,
    scan: Scan,
    items: Vec<Arc<K>>,
    resource_version: String,
    continue_token: Option<String>,
    shard_info: Option<String>,
    reuse: Option<Reuse<K>>,
    _k: PhantomData<fn() -> K>,
}

impl<K> std::fmt::Debug for ListDecoder<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListDecoder")
            .field("offset", &self.base)
            .field("buffered", &self.buf.len())
            .field("items", &self.items.len())
            .finish_non_exhaustive()
    }
}

impl<K: DeserializeOwned> ListDecoder<K> {
    pub(super) fn new(root: Arc<Node>) -> Self {
        ListDecoder {
            root,
            buf: BytesMut::new(),
            base: 0,
            place: Place::Open,
            scan: Scan::default(),
            items: Vec::new(),
            resource_version: String::new(),
            continue_token: None,
            shard_info: None,
            reuse: None,
            _k: PhantomData,
        }
    }

    /// Passes every decoded item through `reuse` and keeps what it returns (see
    /// [`ListWatch::list_reusing`](crate::source::ListWatch::list_reusing)): a replaced copy is
    /// dropped as soon as it was decoded.
    pub fn reusing(mut self, reuse: Reuse<K>) -> Self {
        self.reuse = Some(reuse);
        self
    }

    /// Takes the next bytes of the body and decodes every element they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        self.buf.extend_from_slice(bytes);
        self.advance()
    }

    /// The buffer of bytes not yet decoded, to append to in place (a decompressor writes into
    /// it); call [`advance`](Self::advance) afterwards.
    pub(crate) fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes received and not yet consumed: the element (or field) being received.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes of the body consumed so far.
    pub fn offset(&self) -> u64 {
        self.base
    }

    /// Elements of `items` decoded so far.
    pub fn items_decoded(&self) -> usize {
        self.items.len()
    }

    /// The end of the body: the page, or an error if the list object is incomplete.
    pub fn finish(mut self) -> Result<ListPage<K>, DecodeError> {
        self.advance()?;
        self.skip_whitespace();
        if self.place != Place::End {
            return Err(self.syntax("the rest of the list (the body ended early)"));
        }
        self.items.shrink_to_fit();
        Ok(ListPage {
            items: self.items,
            resource_version: self.resource_version,
            continue_token: self.continue_token,
            shard_info: self.shard_info,
        })
    }

    /// Decodes everything complete in the buffer.
    pub(crate) fn advance(&mut self) -> Result<(), DecodeError> {
        loop {
            if self.scan.pos == 0 {
                self.skip_whitespace();
            }
            let Some(&first) = self.buf.first() else {
                return Ok(());
            };
            match self.place {
                Place::Open => {
                    self.expect(first, b'{', "'{' opening the list object")?;
                    self.place = Place::FirstKey;
                }
                Place::FirstKey if first == b'}' => {
                    self.consume(1);
                    self.place = Place::End;
                }
                Place::FirstKey | Place::Key => {
                    if first != b'"' {
                        return Err(self.syntax("a field name"));
                    }
                    let Some(len) = self.scan_value()? else {
                        return Ok(());
                    };
                    let key: String = serde_json::from_slice(&self.buf[..len])
                        .map_err(|source| DecodeError::Json { what: WHAT, source })?;
                    let field = match key.as_str() {
                        "items" => Field::Items,
                        "metadata" => Field::Metadata,
                        _ => Field::Other,
                    };
                    self.consume(len);
                    self.place = Place::Colon(field);
                }
                Place::Colon(field) => {
                    self.expect(first, b':', "':' after a field name")?;
                    self.place = match field {
                        Field::Items => Place::Items,
                        other => Place::Value(other),
                    };
                }
                Place::Value(field) => {
                    let Some(len) = self.scan_value()? else {
                        return Ok(());
                    };
                    if field == Field::Metadata {
                        let meta: Option<ListMetaLite> =
                            serde_json::from_slice(&self.buf[..len])
                                .map_err(|source| DecodeError::Json { what: WHAT, source })?;
                        if let Some(meta) = meta {
                            self.resource_version = meta.resource_version.unwrap_or_default();
                            self.continue_token = meta.continue_token.filter(|c| !c.is_empty());
                            self.shard_info = meta.shard_info.map(|s| s.selector);
                        }
                    }
                    self.consume(len);
                    self.place = Place::AfterValue;
                }
                Place::Items if first == b'[' => {
                    self.consume(1);
                    self.place = Place::FirstItem;
                }
                Place::Items if first == b'n' => {
                    let Some(len) = self.scan_value()? else {
                        return Ok(());
                    };
                    if &self.buf[..len] != b"null" {
                        return Err(self.syntax("an array of items or null"));
                    }
                    self.consume(len);
                    self.place = Place::AfterValue;
                }
                Place::Items => return Err(self.syntax("an array of items or null")),
                Place::FirstItem if first == b']' => {
                    self.consume(1);
                    self.place = Place::AfterValue;
                }
                Place::FirstItem | Place::Item => {
                    let Some(len) = self.scan_value()? else {
                        return Ok(());
                    };
                    let item = Arc::new(self.decode_item(len)?);
                    let item = match &self.reuse {
                        Some(reuse) => reuse(item),
                        None => item,
                    };
                    self.items.push(item);
                    self.consume(len);
                    self.place = Place::AfterItem;
                }
                Place::AfterItem => {
                    self.place = match first {
                        b',' => Place::Item,
                        b']' => Place::AfterValue,
                        _ => return Err(self.syntax("',' or ']' after a list item")),
                    };
                    self.consume(1);
                }
                Place::AfterValue => {
                    self.place = match first {
                        b',' => Place::Key,
                        b'}' => Place::End,
                        _ => return Err(self.syntax("',' or '}' after a field")),
                    };
                    self.consume(1);
                }
                Place::End => return Err(self.syntax("nothing after the list object")),
            }
        }
    }

    fn decode_item(&self, len: usize) -> Result<K, DecodeError> {
        let mut de = serde_json::Deserializer::from_slice(&self.buf[..len]);
        let item_err = |source| DecodeError::ListItem {
            index: self.items.len(),
            offset: self.base,
            source,
        };
        let seed = SkippingSeed {
            seed: PhantomData::<K>,
            node: &self.root,
        };
        let item = serde::de::DeserializeSeed::deserialize(seed, &mut de).map_err(item_err)?;
        de.end().map_err(item_err)?;
        Ok(item)
    }

    fn expect(&mut self, got: u8, want: u8, what: &'static str) -> Result<(), DecodeError> {
        if got != want {
            return Err(self.syntax(what));
        }
        self.consume(1);
        Ok(())
    }

    fn syntax(&self, expected: &'static str) -> DecodeError {
        DecodeError::Syntax {
            what: WHAT,
            offset: self.base,
            expected,
        }
    }

    fn consume(&mut self, len: usize) {
        self.buf.advance(len);
        self.base += len as u64;
        self.scan = Scan::default();
    }

    fn skip_whitespace(&mut self) {
        let ws = self
            .buf
            .iter()
            .position(|b| !matches!(b, b' ' | b'\n' | b'\r' | b'\t'))
            .unwrap_or(self.buf.len());
        if ws > 0 {
            self.consume(ws);
        }
    }

    /// The length of the value at the front of the buffer once all of it has arrived (`None`
    /// until then; the scan resumes where it stopped).
    fn scan_value(&mut self) -> Result<Option<usize>, DecodeError> {
        if self.scan.pos == 0 && matches!(self.buf[0], b'}' | b']' | b',' | b':') {
            return Err(self.syntax("a value"));
        }
        let buf = &self.buf[..];
        let s = &mut self.scan;
        if s.pos == 0 {
            match buf[0] {
                b'{' | b'[' => s.depth = 1,
                b'"' => s.in_string = true,
                _ => {}
            }
            s.pos = 1;
        }
        if s.depth == 0 && !s.in_string {
            // A bare scalar (number, true, false, null) ends at the next delimiter.
            return Ok(buf[s.pos..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b':' | b' ' | b'\n' | b'\r' | b'\t'))
                .map(|at| s.pos + at)
                .or_else(|| {
                    s.pos = buf.len();
                    None
                }));
        }
        while s.pos < buf.len() {
            if s.in_string {
                if s.escaped {
                    s.escaped = false;
                    s.pos += 1;
                    continue;
                }
                match memchr::memchr2(b'"', b'\\', &buf[s.pos..]) {
                    None => {
                        s.pos = buf.len();
                        return Ok(None);
                    }
                    Some(at) => {
                        s.pos += at + 1;
                        if buf[s.pos - 1] == b'\\' {
                            s.escaped = true;
                        } else {
                            s.in_string = false;
                            if s.depth == 0 {
                                return Ok(Some(s.pos));
                            }
                        }
                    }
                }
                continue;
            }
            let b = buf[s.pos];
            s.pos += 1;
            match b {
                b'"' => s.in_string = true,
                b'{' | b'[' => s.depth += 1,
                b'}' | b']' => {
                    s.depth -= 1;
                    if s.depth == 0 {
                        return Ok(Some(s.pos));
                    }
                }
                _ => {}
            }
        }
        Ok(None)
    }
}
