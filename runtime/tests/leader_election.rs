//! Leader election guarantees, with two or more electors sharing one in-memory Lease under tokio's
//! paused clock (time advances only when every task is idle, so timings are exact).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use parking_lot::Mutex;
use reflex_runtime::leader_election::{
    InMemoryLease, LeaderCallbacks, LeaderElectionConfig, LeaderElectionError, LeaderElector,
    RunOutcome,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

type Elector = Arc<LeaderElector<InMemoryLease>>;

fn config(id: &str) -> LeaderElectionConfig {
    LeaderElectionConfig {
        jitter_factor: 0.0,
        ..LeaderElectionConfig::new(id)
    }
}

fn elector(store: &InMemoryLease, id: &str) -> Elector {
    Arc::new(LeaderElector::new(store.clone(), config(id)).unwrap())
}

fn spec(store: &InMemoryLease) -> LeaseSpec {
    store.lease().and_then(|l| l.spec).expect("lease exists")
}

fn spawn_run(
    e: &Elector,
    shutdown: &CancellationToken,
    cb: LeaderCallbacks,
) -> tokio::task::JoinHandle<RunOutcome> {
    let (e, shutdown) = (e.clone(), shutdown.clone());
    tokio::spawn(async move { e.run(&shutdown, cb).await })
}

async fn wait_leader(e: &Elector) {
    e.subscribe().wait_for(|s| s.is_leader).await.unwrap();
}

#[test]
fn config_validation_rejects_bad_timings_and_empty_identity() {
    let s = Duration::from_secs;
    let base = LeaderElectionConfig::new("a");
    type Expect = fn(&LeaderElectionError) -> bool;
    let cases: Vec<(&str, LeaderElectionConfig, Expect)> = vec![
        ("empty identity", LeaderElectionConfig::new(""), |e| {
            matches!(e, LeaderElectionError::EmptyIdentity)
        }),
        (
            "zero retry",
            LeaderElectionConfig {
                retry_period: s(0),
                ..base.clone()
            },
            |e| matches!(e, LeaderElectionError::ZeroDuration { .. }),
        ),
        (
            "lease equals deadline",
            LeaderElectionConfig {
                lease_duration: s(10),
                ..base.clone()
            },
            |e| {
                matches!(
                    e,
                    LeaderElectionError::LeaseDurationNotAboveRenewDeadline { .. }
                )
            },
        ),
        (
            "deadline within 1.2 retry",
            LeaderElectionConfig {
                renew_deadline: Duration::from_millis(2400),
                ..base.clone()
            },
            |e| matches!(e, LeaderElectionError::RenewDeadlineTooShort { .. }),
        ),
        (
            "negative jitter",
            LeaderElectionConfig {
                jitter_factor: -1.0,
                ..base.clone()
            },
            |e| matches!(e, LeaderElectionError::InvalidJitter(_)),
        ),
    ];
    for (name, cfg, expected) in cases {
        let err = cfg.validate().expect_err(name);
        assert!(expected(&err), "{name}: {err:?}");
        assert!(
            LeaderElector::new(InMemoryLease::new("l"), cfg).is_err(),
            "{name}"
        );
    }
    assert_eq!(base.validate().ok(), Some(()));
    assert_eq!(
        (base.lease_duration, base.renew_deadline, base.retry_period),
        (s(15), s(10), s(2))
    );
}

#[tokio::test(start_paused = true)]
async fn first_candidate_acquires_and_renews_keeping_acquire_time_while_other_follows() {
    let store = InMemoryLease::new("lock");
    let (a, b) = (elector(&store, "a"), elector(&store, "b"));
    let shutdown = CancellationToken::new();
    let ta = spawn_run(&a, &shutdown, LeaderCallbacks::new());
    wait_leader(&a).await;
    let first = spec(&store);
    assert_eq!(first.holder_identity.as_deref(), Some("a"));
    assert_eq!(first.lease_transitions, Some(0));
    assert_eq!(first.lease_duration_seconds, Some(15));

    let tb = spawn_run(&b, &shutdown, LeaderCallbacks::new());
    let writes = store.writes();
    // 61 s, so the 30th renewal (due at +60 s) is not racing the end of the sleep.
    tokio::time::sleep(Duration::from_secs(61)).await;
    let later = spec(&store);
    assert!(a.is_leader() && !b.is_leader());
    assert_eq!(b.leader().as_deref(), Some("a"));
    assert_eq!(
        later.acquire_time, first.acquire_time,
        "renewal keeps acquireTime"
    );
    assert_eq!(later.lease_transitions, Some(0));
    // One renewal per retry period (2 s).
    assert_eq!(store.writes() - writes, 30);
    shutdown.cancel();
    assert_eq!(ta.await.unwrap(), RunOutcome::Shutdown);
    assert_eq!(tb.await.unwrap(), RunOutcome::Shutdown);
}

#[tokio::test(start_paused = true)]
async fn expired_lease_is_taken_over_after_lease_duration_of_local_observation() {
    let store = InMemoryLease::new("lock");
    let (a, b) = (elector(&store, "a"), elector(&store, "b"));
    let shutdown = CancellationToken::new();
    let ta = spawn_run(&a, &shutdown, LeaderCallbacks::new());
    wait_leader(&a).await;
    let tb = spawn_run(&b, &shutdown, LeaderCallbacks::new());
    tokio::time::sleep(Duration::from_secs(7)).await;
    // Crash: the leader stops renewing without releasing.
    ta.abort();
    let crashed = Instant::now();
    wait_leader(&b).await;
    let took = crashed.elapsed();
    // Last renewal at most one retry period before the crash, seen at most one retry period late by
    // b, which then takes over at its first attempt after 15 s of no change.
    assert!(
        took > Duration::from_secs(13) && took <= Duration::from_secs(19),
        "took {took:?}"
    );
    let s = spec(&store);
    assert_eq!(s.holder_identity.as_deref(), Some("b"));
    assert_eq!(
        s.lease_transitions,
        Some(1),
        "takeover increments leaseTransitions"
    );
    shutdown.cancel();
    tb.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn released_lease_is_taken_over_within_one_retry_period() {
    let store = InMemoryLease::new("lock");
    let (a, b) = (elector(&store, "a"), elector(&store, "b"));
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let ta = spawn_run(&a, &stop_a, LeaderCallbacks::new());
    wait_leader(&a).await;
    let tb = spawn_run(&b, &stop_b, LeaderCallbacks::new());
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop_a.cancel();
    assert_eq!(ta.await.unwrap(), RunOutcome::Shutdown);
    let released = spec(&store);
    assert_eq!(released.holder_identity.as_deref(), Some(""));
    assert_eq!(released.lease_duration_seconds, Some(1));
    let at = Instant::now();
    wait_leader(&b).await;
    assert!(
        at.elapsed() <= Duration::from_secs(2),
        "handover took {:?}",
        at.elapsed()
    );
    assert_eq!(spec(&store).lease_transitions, Some(1));
    stop_b.cancel();
    tb.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn leader_that_cannot_renew_within_deadline_cancels_its_leading_token_before_lease_expires() {
    let store = InMemoryLease::new("lock");
    let a = elector(&store, "a");
    let shutdown = CancellationToken::new();
    let token = Arc::new(Mutex::new(None::<CancellationToken>));
    let stopped = Arc::new(Mutex::new(0));
    let (t, st) = (token.clone(), stopped.clone());
    let cb = LeaderCallbacks::new()
        .on_started_leading(move |tok| *t.lock() = Some(tok))
        .on_stopped_leading(move || *st.lock() += 1);
    let ta = spawn_run(&a, &shutdown, cb);
    wait_leader(&a).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let leading = token.lock().clone().expect("started leading");
    assert!(!leading.is_cancelled());
    store.set_unavailable(true);
    let cut = Instant::now();
    leading.cancelled().await;
    let lost = cut.elapsed();
    assert!(
        lost > Duration::from_secs(10) && lost <= Duration::from_secs(12),
        "lost after {lost:?}"
    );
    assert!(
        lost < Duration::from_secs(15),
        "stops before anyone may take over"
    );
    assert_eq!(ta.await.unwrap(), RunOutcome::LostLeadership);
    assert_eq!(*stopped.lock(), 1);
}

#[tokio::test(start_paused = true)]
async fn simultaneous_candidates_elect_exactly_one_leader() {
    let store = InMemoryLease::new("lock");
    let electors: Vec<Elector> = ["a", "b", "c"]
        .iter()
        .map(|id| elector(&store, id))
        .collect();
    let shutdown = CancellationToken::new();
    let tasks: Vec<_> = electors
        .iter()
        .map(|e| spawn_run(e, &shutdown, LeaderCallbacks::new()))
        .collect();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let leaders: Vec<_> = electors.iter().filter(|e| e.is_leader()).collect();
    assert_eq!(leaders.len(), 1);
    let holder = spec(&store).holder_identity.unwrap();
    assert_eq!(leaders[0].config().identity, holder);
    assert_eq!(spec(&store).lease_transitions, Some(0));
    shutdown.cancel();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn leader_never_overwrites_a_conflicting_holder_and_steps_down() {
    let store = InMemoryLease::new("lock");
    let a = elector(&store, "a");
    let shutdown = CancellationToken::new();
    let ta = spawn_run(&a, &shutdown, LeaderCallbacks::new());
    wait_leader(&a).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut stolen: Lease = store.lease().unwrap();
    stolen.spec.as_mut().unwrap().holder_identity = Some("intruder".into());
    store.force_write(stolen);
    assert_eq!(ta.await.unwrap(), RunOutcome::LostLeadership);
    assert_eq!(spec(&store).holder_identity.as_deref(), Some("intruder"));
    assert!(!a.is_leader());
}

#[tokio::test(start_paused = true)]
async fn stopped_leading_is_called_even_when_never_led() {
    let store = InMemoryLease::new("lock");
    let (a, b) = (elector(&store, "a"), elector(&store, "b"));
    let shutdown = CancellationToken::new();
    let ta = spawn_run(&a, &shutdown, LeaderCallbacks::new());
    wait_leader(&a).await;
    let (started, stopped) = (Arc::new(Mutex::new(0)), Arc::new(Mutex::new(0)));
    let (s1, s2) = (started.clone(), stopped.clone());
    let stop_b = CancellationToken::new();
    let cb = LeaderCallbacks::new()
        .on_started_leading(move |_| *s1.lock() += 1)
        .on_stopped_leading(move || *s2.lock() += 1);
    let tb = spawn_run(&b, &stop_b, cb);
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop_b.cancel();
    assert_eq!(tb.await.unwrap(), RunOutcome::Shutdown);
    assert_eq!((*started.lock(), *stopped.lock()), (0, 1));
    assert!(
        a.is_leader(),
        "a standby's shutdown does not release the leader's lease"
    );
    shutdown.cancel();
    ta.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn new_leader_callback_reports_each_holder_change() {
    let store = InMemoryLease::new("lock");
    let (a, b) = (elector(&store, "a"), elector(&store, "b"));
    let stop_a = CancellationToken::new();
    let ta = spawn_run(&a, &stop_a, LeaderCallbacks::new());
    wait_leader(&a).await;
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let s = seen.clone();
    let stop_b = CancellationToken::new();
    let tb = spawn_run(
        &b,
        &stop_b,
        LeaderCallbacks::new().on_new_leader(move |h| s.lock().push(h.to_owned())),
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop_a.cancel();
    ta.await.unwrap();
    wait_leader(&b).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(*seen.lock(), vec!["a".to_owned(), "b".to_owned()]);
    stop_b.cancel();
    tb.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn check_fails_once_leader_has_not_renewed_for_lease_duration_plus_tolerance() {
    let store = InMemoryLease::new("lock");
    let a = elector(&store, "a");
    let tolerance = Duration::from_secs(5);
    assert!(a.check(tolerance).is_ok(), "not leading: healthy");
    let shutdown = CancellationToken::new();
    let ta = spawn_run(&a, &shutdown, LeaderCallbacks::new());
    wait_leader(&a).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Stuck: the renew loop no longer runs but the elector still believes it leads.
    ta.abort();
    let _ = ta.await;
    tokio::time::sleep(Duration::from_secs(18)).await;
    assert!(
        a.check(tolerance).is_ok(),
        "19 s since the last renewal is within 15 s + 5 s"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(matches!(
        a.check(tolerance),
        Err(LeaderElectionError::RenewalOverdue { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn run_while_leader_runs_work_only_while_leading_and_finishes_it_before_handover() {
    let store = InMemoryLease::new("lock");
    let (a, b) = (elector(&store, "a"), elector(&store, "b"));
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let work = |id: &'static str, log: Arc<Mutex<Vec<String>>>| {
        move |leading: CancellationToken| {
            let log = log.clone();
            async move {
                log.lock().push(format!("{id} start"));
                leading.cancelled().await;
                // Cleanup takes a while; the lease must not be released before it ends.
                tokio::time::sleep(Duration::from_secs(3)).await;
                log.lock().push(format!("{id} end"));
            }
        }
    };
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let (ea, sa, la) = (a.clone(), stop_a.clone(), log.clone());
    let ta = tokio::spawn(async move { ea.run_while_leader(&sa, work("a", la)).await });
    wait_leader(&a).await;
    let (eb, sb, lb) = (b.clone(), stop_b.clone(), log.clone());
    let tb = tokio::spawn(async move { eb.run_while_leader(&sb, work("b", lb)).await });
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(*log.lock(), vec!["a start"]);
    stop_a.cancel();
    assert_eq!(ta.await.unwrap(), None);
    wait_leader(&b).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(*log.lock(), vec!["a start", "a end", "b start"]);

    // A lost term is followed by a new campaign once the store is reachable again.
    store.set_unavailable(true);
    b.subscribe().wait_for(|s| !s.is_leader).await.ok();
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(log.lock().last().map(String::as_str), Some("b end"));
    store.set_unavailable(false);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(b.is_leader());
    assert_eq!(
        *log.lock(),
        vec!["a start", "a end", "b start", "b end", "b start"]
    );
    stop_b.cancel();
    assert_eq!(tb.await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn release_on_shutdown_retries_conflicting_writes() {
    let store = InMemoryLease::new("lock");
    let a = elector(&store, "a");
    let shutdown = CancellationToken::new();
    let ta = spawn_run(&a, &shutdown, LeaderCallbacks::new());
    wait_leader(&a).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    store.inject_conflicts(3);
    shutdown.cancel();
    assert_eq!(ta.await.unwrap(), RunOutcome::Shutdown);
    assert_eq!(spec(&store).holder_identity.as_deref(), Some(""));
    assert!(!a.is_leader());
}

#[tokio::test(start_paused = true)]
async fn run_while_leader_returns_work_output_and_releases_when_work_ends_itself() {
    let store = InMemoryLease::new("lock");
    let a = elector(&store, "a");
    let shutdown = CancellationToken::new();
    let out = a
        .run_while_leader(&shutdown, |_leading| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            42
        })
        .await;
    assert_eq!(out, Some(42));
    assert_eq!(
        spec(&store).holder_identity.as_deref(),
        Some(""),
        "lease released"
    );
}
