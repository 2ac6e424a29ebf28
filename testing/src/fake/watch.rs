//! Watch streams: newline-delimited JSON events over a chunked response.
//!
//! A watch is a task-free stream: initial events, then the live channel, interleaved with
//! bookmarks and bounded by `timeoutSeconds`. When the storage drops the watcher for falling
//! behind, the stream ends with an `ERROR` event carrying a 410 `Status`, as the watch cache does.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::media::Output;
use super::resources::ResourceDef;
use super::selectors::Selectors;
use super::status::ApiError;
use super::storage::{Event, EventType, WatchMsg, WatchStart};

/// Options of one watch request.
pub struct WatchOptions {
    /// Namespace filter.
    pub namespace: Option<String>,
    /// Selectors.
    pub selectors: Selectors,
    /// Bookmark interval, when bookmarks were requested.
    pub bookmarks: Option<Duration>,
    /// Close after this long.
    pub timeout: Option<Duration>,
    /// Send the initial-events-end bookmark after the initial events.
    pub initial_end_bookmark: bool,
    /// Representation of the event objects (full or `PartialObjectMetadata`).
    pub output: Output,
    /// While this reads `true`, each change event waits before it is sent (the fault that
    /// makes a client's cache lag behind its own writes).
    pub held: Option<tokio::sync::watch::Receiver<bool>>,
}

fn line(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

fn bookmark(def: &ResourceDef, output: Output, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let obj = json!({"apiVersion": def.api_version(), "kind": def.kind, "metadata": meta});
    line(&json!({"type": "BOOKMARK", "object": &*output.object(&obj)}))
}

/// Translates an event through the selectors: objects entering the selection are ADDED, objects
/// leaving it DELETED.
fn filtered(ev: &Event, opts: &WatchOptions) -> Option<Bytes> {
    let sel = |o: &Value| {
        opts.namespace
            .as_deref()
            .is_none_or(|n| o.pointer("/metadata/namespace").and_then(Value::as_str) == Some(n))
            && opts.selectors.matches(o)
    };
    let now = sel(&ev.obj);
    let before = ev.prev.as_deref().is_some_and(sel);
    let kind = match ev.kind {
        EventType::Added if now => EventType::Added,
        EventType::Deleted if before => EventType::Deleted,
        EventType::Modified if now && before => EventType::Modified,
        EventType::Modified if now => EventType::Added,
        EventType::Modified if before => EventType::Deleted,
        _ => return None,
    };
    Some(event_line(kind, &opts.output.object(&ev.obj)))
}

/// One watch event line, written around the stored object (building a `Value` of the event
/// first would deep-copy the object for every watcher).
fn event_line(kind: EventType, obj: &Value) -> Bytes {
    let mut b = Vec::with_capacity(4096);
    b.extend_from_slice(b"{\"type\":\"");
    b.extend_from_slice(kind.as_str().as_bytes());
    b.extend_from_slice(b"\",\"object\":");
    // Writing a JSON value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut b, obj);
    b.extend_from_slice(b"}\n");
    Bytes::from(b)
}

struct State {
    def: ResourceDef,
    opts: WatchOptions,
    initial: std::vec::IntoIter<Arc<Event>>,
    start: WatchStart,
    last_rv: u64,
    deadline: Option<Instant>,
    next_bookmark: Option<Instant>,
    pending_initial_end: bool,
    done: bool,
}

/// Builds the byte stream of a watch.
pub fn stream(
    def: ResourceDef,
    start: WatchStart,
    opts: WatchOptions,
) -> impl Stream<Item = Bytes> + Send {
    let now = Instant::now();
    let mut st = State {
        deadline: opts.timeout.map(|t| now + t),
        next_bookmark: opts.bookmarks.map(|b| now + b),
        pending_initial_end: opts.initial_end_bookmark,
        last_rv: start.start_rv,
        def,
        opts,
        initial: Vec::new().into_iter(),
        start,
        done: false,
    };
    st.initial = std::mem::take(&mut st.start.initial).into_iter();
    futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        for ev in st.initial.by_ref() {
            if let Some(b) = filtered(&ev, &st.opts) {
                return Some((b, st));
            }
        }
        if st.pending_initial_end {
            st.pending_initial_end = false;
            let b = bookmark(&st.def, st.opts.output, st.last_rv, true);
            return Some((b, st));
        }
        loop {
            let deadline = st.deadline;
            let bookmark_at = st.next_bookmark;
            tokio::select! {
                biased;
                msg = st.start.rx.recv() => match msg {
                    Some(WatchMsg::Event(ev)) => {
                        st.last_rv = st.last_rv.max(ev.rv);
                        if let Some(b) = filtered(&ev, &st.opts) {
                            if let Some(held) = st.opts.held.as_mut() {
                                // No bookmark either while held: nothing past this event leaves.
                                let _ = held.wait_for(|held| !*held).await;
                            }
                            return Some((b, st));
                        }
                    }
                    Some(WatchMsg::Raw(bytes)) => return Some((bytes, st)),
                    None => {
                        st.done = true;
                        if st.start.expired.load(Ordering::SeqCst) {
                            let err = ApiError::gone(format!("too old resource version: {}", st.last_rv));
                            return Some((line(&json!({"type": "ERROR", "object": err.to_status()})), st));
                        }
                        return None;
                    }
                },
                _ = sleep_until(deadline) => return None,
                _ = sleep_until(bookmark_at) => {
                    let interval = st.opts.bookmarks.unwrap_or(Duration::from_secs(60));
                    st.next_bookmark = Some(Instant::now() + interval);
                    let b = bookmark(&st.def, st.opts.output, st.last_rv, false);
                    return Some((b, st));
                }
            }
        }
    })
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::resources::ResKey;
    use crate::fake::storage::{Storage, WatchFrom};
    use futures::StreamExt;

    #[tokio::test]
    async fn a_watcher_that_falls_behind_ends_with_a_410_error_event() {
        let mut s = Storage::new(100, 2);
        let res = ResKey {
            group: String::new(),
            version: "v1".into(),
            plural: "configmaps".into(),
        };
        let def = s.def(&res).unwrap();
        let start = s
            .watch(
                &res,
                None,
                &Selectors::default(),
                WatchFrom::After(s.current_rv()),
            )
            .unwrap();
        for i in 0..3 {
            s.create(
                &res,
                "default",
                json!({"metadata": {"name": format!("c{i}")}}),
            )
            .unwrap();
        }
        let opts = WatchOptions {
            namespace: None,
            selectors: Selectors::default(),
            bookmarks: None,
            timeout: None,
            initial_end_bookmark: false,
            output: Output::FULL,
            held: None,
        };
        let lines: Vec<Value> = stream(def, start, opts)
            .map(|b| serde_json::from_slice(&b).unwrap())
            .collect()
            .await;
        let types: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["ADDED", "ADDED", "ERROR"]);
        assert_eq!(lines[2]["object"]["code"], 410);
    }
}
