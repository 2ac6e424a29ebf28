//! The list decoder takes a body in chunks split anywhere: the page is what one decode of the
//! whole body gives, each item is decoded exactly once, and what it buffers is bounded by the
//! item being received, not by the body.

use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::ConfigMap;
use proptest::prelude::*;
use reflex_informer::decode::{DecodeError, Decoder};
use serde_json::{Value, json};

/// A list body with `names` as ConfigMaps whose data make them `pad` bytes longer, with strings
/// that hold every character the scanner must not take for structure.
fn body(names: &[String], pad: usize, rv: &str, cont: Option<&str>, items_first: bool) -> Vec<u8> {
    let items: Vec<Value> = names
        .iter()
        .map(|name| {
            json!({
                "metadata": {"name": name, "managedFields": [{"manager": "m\"}]{[", "operation": "Apply"}]},
                "data": {"tricky": "a \\\" ] } [ { , : \" end", "pad": "x".repeat(pad), "\\u00e9": "\u{e9}"},
            })
        })
        .collect();
    let mut meta = json!({"resourceVersion": rv});
    if let Some(cont) = cont {
        meta["continue"] = json!(cont);
    }
    // Written by hand so that the order of the top-level fields is the test's choice.
    let items = serde_json::to_string(&items).unwrap();
    let meta = serde_json::to_string(&meta).unwrap();
    let text = if items_first {
        format!(
            "{{ \"items\" : {items} ,\n\"kind\":\"ConfigMapList\",\"apiVersion\":\"v1\",\"metadata\":{meta}, \"extra\": [1, {{\"x\": null}}, -2.5e3, true]}}\n"
        )
    } else {
        format!(
            "{{\"kind\":\"ConfigMapList\",\"apiVersion\":\"v1\",\"metadata\":{meta},\"items\":{items}}}"
        )
    };
    text.into_bytes()
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("cm-{i}")).collect()
}

/// Decodes `body` pushed in pieces cut at `cuts` (offsets, any order).
fn decode_in_pieces(body: &[u8], cuts: &[usize]) -> Result<Vec<(String, String)>, DecodeError> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
    cuts.sort_unstable();
    let mut list = Decoder::default().list_decoder::<ConfigMap>();
    let mut from = 0;
    for cut in cuts.into_iter().chain([body.len()]) {
        list.push(&body[from..cut])?;
        from = cut;
    }
    let page = list.finish()?;
    let mut out = vec![(
        page.resource_version.clone(),
        page.continue_token.clone().unwrap_or_default(),
    )];
    for item in &page.items {
        assert!(item.metadata.managed_fields.is_none(), "skipping applies");
        let data = item.data.as_ref().unwrap();
        assert_eq!(data["tricky"], "a \\\" ] } [ { , : \" end");
        out.push((item.metadata.name.clone().unwrap(), data["pad"].clone()));
    }
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_split_of_the_body_decodes_to_the_same_page(
        n in 0usize..12,
        pad in 0usize..300,
        items_first in any::<bool>(),
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        let body = body(&names(n), pad, "42", Some("token"), items_first);
        let whole = decode_in_pieces(&body, &[]).unwrap();
        prop_assert_eq!(whole.len(), n + 1);
        prop_assert_eq!(&whole[0], &("42".to_owned(), "token".to_owned()));
        for (i, (name, pad_value)) in whole[1..].iter().enumerate() {
            prop_assert_eq!(name, &format!("cm-{i}"));
            prop_assert_eq!(pad_value.len(), pad);
        }
        prop_assert_eq!(decode_in_pieces(&body, &cuts).unwrap(), whole);
    }

    #[test]
    fn every_truncation_is_an_error_never_a_page(cut in any::<usize>(), items_first in any::<bool>()) {
        let body = body(&names(3), 20, "7", None, items_first);
        // Trailing whitespace is not part of the object: cut inside the object only.
        let end = body.trim_ascii_end().len();
        let cut = cut % end;
        let mut list = Decoder::default().list_decoder::<ConfigMap>();
        let result = list.push(&body[..cut]).and_then(|()| list.finish());
        prop_assert!(result.is_err(), "a body cut at {} of {} decoded", cut, end);
    }
}

#[test]
fn byte_at_a_time_matches_the_whole_body() {
    let body = body(&names(5), 50, "9", None, true);
    let all: Vec<usize> = (0..body.len()).collect();
    assert_eq!(
        decode_in_pieces(&body, &all).unwrap(),
        decode_in_pieces(&body, &[]).unwrap()
    );
}

static DECODED: AtomicUsize = AtomicUsize::new(0);

/// An object that counts how often it is decoded.
#[derive(Debug)]
struct Counted;

impl<'de> serde::Deserialize<'de> for Counted {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(de)?;
        DECODED.fetch_add(1, Ordering::SeqCst);
        Ok(Counted)
    }
}

#[test]
fn each_item_is_decoded_once_as_soon_as_it_is_complete_and_the_buffer_stays_small() {
    let pad = 4_000;
    let n = 200;
    let body = body(&names(n), pad, "1", None, false);
    let mut list = Decoder::full().list_decoder::<Counted>();
    let chunk = 1_000;
    let mut most_buffered = 0;
    for (i, piece) in body.chunks(chunk).enumerate() {
        list.push(piece).unwrap();
        most_buffered = most_buffered.max(list.buffered());
        assert_eq!(
            DECODED.load(Ordering::SeqCst),
            list.items_decoded(),
            "decoded once each, after chunk {i}"
        );
        // Every item whose last byte is in has been decoded: at most the one being received
        // is not.
        let item_len = body.len() / n;
        let received = (i + 1) * chunk;
        assert!(
            list.items_decoded() + 2 >= received / item_len,
            "after {received} bytes only {} items",
            list.items_decoded()
        );
    }
    let page = list.finish().unwrap();
    assert_eq!(page.items.len(), n);
    assert_eq!(DECODED.load(Ordering::SeqCst), n);
    // One item is about 4.2 KB of a 0.85 MB body: what was held is an item and a chunk.
    assert!(
        most_buffered < pad + 500 + chunk,
        "buffered up to {most_buffered} bytes of a {}-byte body",
        body.len()
    );
}

#[test]
fn items_null_and_empty_lists_are_pages_without_items() {
    for body in [
        r#"{"metadata":{"resourceVersion":"5"},"items":null}"#,
        r#"{"metadata":{"resourceVersion":"5"},"items":[]}"#,
        r#"{"items":[ ] , "metadata":{"resourceVersion":"5","continue":""}}"#,
    ] {
        let page = Decoder::default()
            .decode_list::<ConfigMap>(body.as_bytes())
            .unwrap();
        assert!(page.items.is_empty(), "{body}");
        assert_eq!(page.resource_version, "5", "{body}");
        assert_eq!(
            page.continue_token, None,
            "{body}: an empty token is no token"
        );
    }
}

#[test]
fn an_item_that_is_not_the_target_type_names_its_index_and_offset() {
    let body = br#"{"items":[{"metadata":{"name":"a"}},{"metadata":{"name":"b"},"data":{"k":1}}]}"#;
    let mut list = Decoder::default().list_decoder::<ConfigMap>();
    let err = list.push(body).unwrap_err();
    match err {
        DecodeError::ListItem { index, offset, .. } => {
            assert_eq!(index, 1);
            assert_eq!(offset, 36);
            assert_eq!(body[offset as usize], b'{');
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(list.items_decoded(), 1, "the items before it were decoded");
}
