//! Decoding a list of 2,000 realistic Pods (about 4–6 KB of JSON each, with managedFields,
//! labels, annotations and owner references): serde_json into full `k8s_openapi` Pods, the
//! skipping decoder (managedFields dropped while parsing), the skipping decoder with more paths,
//! and a small projection. Throughput is reported in Pods per second.
//!
//! The second group compares JSON libraries that decode into the same serde types on the same
//! Pods: serde_json, sonic-rs and simd-json, decoding the whole `PodList` into
//! `ObjectList<Pod>`, and each Pod through the skipping decoder's seed (managedFields dropped
//! while parsing), which works over any serde `Deserializer`. simd-json parses in place, so
//! its figures include copying the input.
//!
//! `cargo bench -p reflex-informer --bench decode -- --quick`

#[path = "../tests/support/objects.rs"]
mod objects;

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::ObjectList;
use reflex_informer::decode::{DecodeOptions, Decoder, SkipPath};
use serde::de::DeserializeSeed;

const PODS: usize = 2_000;

/// What a scheduler-like controller reads of a Pod.
#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)]
struct PodPlacement {
    metadata: ObjectMeta,
    #[serde(default)]
    spec: PlacementSpec,
    #[serde(default)]
    status: PlacementStatus,
}

#[derive(Debug, Default, serde::Deserialize)]
#[allow(dead_code)]
struct PlacementSpec {
    #[serde(rename = "nodeName")]
    node_name: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[allow(dead_code)]
struct PlacementStatus {
    phase: Option<String>,
}

fn decode(c: &mut Criterion) {
    let mut g = objects::Gen::new(42);
    let pods: Vec<_> = (0..PODS).map(|i| g.pod("bench", i)).collect();
    let body = objects::list_json("PodList", "1", &pods);
    eprintln!(
        "decode bench: {PODS} Pods, {} bytes of JSON ({} bytes per Pod)",
        body.len(),
        body.len() / PODS
    );

    let skip_managed = Decoder::default();
    let skip_more = Decoder::new(
        &DecodeOptions::default()
            .skip(
                SkipPath::pointer(
                    "/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration",
                )
                .expect("valid pointer"),
            )
            .skip(SkipPath::pointer("/status/conditions").expect("valid pointer")),
    );
    let full = Decoder::full();

    let mut group = c.benchmark_group("decode_pod_list");
    group.throughput(Throughput::Elements(PODS as u64));
    group.sample_size(10);
    group.bench_function("serde_json_full_object_list", |b| {
        b.iter(|| {
            let list: ObjectList<Pod> = serde_json::from_slice(black_box(&body)).expect("decodes");
            black_box(list.items.len())
        })
    });
    group.bench_function("reflex_full", |b| {
        b.iter(|| {
            black_box(
                full.decode_list::<Pod>(black_box(&body))
                    .expect("decodes")
                    .items
                    .len(),
            )
        })
    });
    group.bench_function("reflex_skip_managed_fields", |b| {
        b.iter(|| {
            black_box(
                skip_managed
                    .decode_list::<Pod>(black_box(&body))
                    .expect("decodes")
                    .items
                    .len(),
            )
        })
    });
    group.bench_function("reflex_skip_managed_last_applied_conditions", |b| {
        b.iter(|| {
            black_box(
                skip_more
                    .decode_list::<Pod>(black_box(&body))
                    .expect("decodes")
                    .items
                    .len(),
            )
        })
    });
    group.bench_function("reflex_projection_skip_managed_fields", |b| {
        b.iter(|| {
            black_box(
                skip_managed
                    .decode_list::<PodPlacement>(black_box(&body))
                    .expect("decodes")
                    .items
                    .len(),
            )
        })
    });
    group.finish();
}

fn json_libraries(c: &mut Criterion) {
    let mut g = objects::Gen::new(42);
    let pods: Vec<_> = (0..PODS).map(|i| g.pod("bench", i)).collect();
    let body = objects::list_json("PodList", "1", &pods);
    let each: Vec<Vec<u8>> = pods
        .iter()
        .map(|p| serde_json::to_vec(p).expect("JSON values serialize"))
        .collect();
    let skip = Decoder::default();

    // The libraries must agree before they are compared.
    let reference: ObjectList<Pod> = serde_json::from_slice(&body).expect("serde_json decodes");
    let sonic: ObjectList<Pod> = sonic_rs::from_slice(&body).expect("sonic-rs decodes");
    let simd: ObjectList<Pod> =
        simd_json::serde::from_slice(&mut body.clone()).expect("simd-json decodes");
    assert!(reference.items == sonic.items && reference.items == simd.items);

    let mut group = c.benchmark_group("json_libraries");
    group.throughput(Throughput::Elements(PODS as u64));
    group.sample_size(10);
    group.bench_function("serde_json_object_list", |b| {
        b.iter(|| {
            let list: ObjectList<Pod> = serde_json::from_slice(black_box(&body)).expect("decodes");
            black_box(list.items.len())
        })
    });
    group.bench_function("sonic_rs_object_list", |b| {
        b.iter(|| {
            let list: ObjectList<Pod> = sonic_rs::from_slice(black_box(&body)).expect("decodes");
            black_box(list.items.len())
        })
    });
    group.bench_function("simd_json_object_list_with_copy", |b| {
        b.iter(|| {
            let mut copy = black_box(&body).clone();
            let list: ObjectList<Pod> = simd_json::serde::from_slice(&mut copy).expect("decodes");
            black_box(list.items.len())
        })
    });
    group.bench_function("serde_json_skipping_seed_per_pod", |b| {
        b.iter(|| {
            for json in black_box(&each) {
                let mut de = serde_json::Deserializer::from_slice(json);
                let pod: Pod = skip.seed::<Pod>().deserialize(&mut de).expect("decodes");
                black_box(pod);
            }
        })
    });
    group.bench_function("sonic_rs_skipping_seed_per_pod", |b| {
        b.iter(|| {
            for json in black_box(&each) {
                let mut de = sonic_rs::Deserializer::from_slice(json);
                let pod: Pod = skip.seed::<Pod>().deserialize(&mut de).expect("decodes");
                black_box(pod);
            }
        })
    });
    group.bench_function("simd_json_skipping_seed_per_pod_with_copy", |b| {
        b.iter(|| {
            for json in black_box(&each) {
                let mut copy = json.clone();
                let mut de = simd_json::Deserializer::from_slice(&mut copy).expect("parses");
                let pod: Pod = skip.seed::<Pod>().deserialize(&mut de).expect("decodes");
                black_box(pod);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, decode, json_libraries);
criterion_main!(benches);
