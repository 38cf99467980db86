//! How the consumer gets a batch through a store or broker that may be down
//! or may refuse part of it, without dropping anything it was not refused:
//!
//! - [`until_answered`] repeats a call while it fails with a transient error
//!   (the store or broker unreachable), with jittered exponential backoff
//!   ([`retry_delays`]), until it goes through, is refused, or the consumer
//!   is asked to stop;
//! - [`isolate_refused`] splits a refused call over a list in halves until
//!   each refused item stands alone, and gets everything else through, in
//!   order.
//!
//! Both are generic over the call and know nothing of events, Redis or
//! Kafka, so they are tested here with fake calls.

use backon::{BackoffBuilder, ExponentialBuilder};
use std::future::Future;
use std::ops::Range;
use std::time::Duration;
use tokio::sync::watch;

/// The longest wait between two attempts at one call.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// Waits between attempts at one call: exponential from 50 ms, doubling up
/// to 2.5 s, each plus a random jitter of up to as much again (so instances
/// that failed together do not retry together, and no wait exceeds
/// [`MAX_RETRY_DELAY`]). Never ends: a batch is never dropped.
pub fn retry_delays() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(MAX_RETRY_DELAY / 2)
        .with_jitter()
        .without_max_times()
        .build()
}

/// The consumer was asked to stop before a call went through: its batch
/// stays uncommitted and is redelivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stopped before the batch went through; it will be redelivered")]
pub struct Stopped;

/// What a call came to once the store (or broker) answered.
#[derive(Debug, PartialEq)]
pub enum Answer<O, E> {
    Done(O),
    /// Refused: retrying the same call unchanged fails again.
    Refused(E),
}

/// Resolves once `stop` turns true; never if its sender is gone.
pub async fn stop_requested(stop: &watch::Receiver<bool>) {
    let mut stop = stop.clone();
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Calls `call` until it succeeds or fails with an error that
/// `is_transient` does not accept (→ [`Answer::Refused`]), waiting
/// [`retry_delays`] between attempts. A stop request ends the wait, or the
/// call in flight (which is harmless: nothing of the batch is committed).
/// `what` names the call in the logs.
pub async fn until_answered<O, E, F, Fut>(
    what: &'static str,
    stop: &watch::Receiver<bool>,
    is_transient: impl Fn(&E) -> bool,
    mut call: F,
) -> Result<Answer<O, E>, Stopped>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<O, E>>,
    E: std::fmt::Display,
{
    let mut delays = retry_delays();
    loop {
        let result = tokio::select! {
            biased;
            r = call() => r,
            _ = stop_requested(stop) => return Err(Stopped),
        };
        let err = match result {
            Ok(o) => return Ok(Answer::Done(o)),
            Err(e) if !is_transient(&e) => return Ok(Answer::Refused(e)),
            Err(e) => e,
        };
        let wait = delays.next().unwrap_or(MAX_RETRY_DELAY);
        tracing::warn!(call = what, error = %err, retry_in_ms = wait.as_millis() as u64, "unreachable; retrying the same call");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop_requested(stop) => return Err(Stopped),
        }
    }
}

/// [`until_answered`] for a call none of whose errors is a refusal (a
/// dead letter: the broker unreachable or slow): retried until it goes
/// through, or the consumer stops.
pub async fn until_done<O, E, F, Fut>(
    what: &'static str,
    stop: &watch::Receiver<bool>,
    call: F,
) -> Result<O, Stopped>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<O, E>>,
    E: std::fmt::Display,
{
    match until_answered(what, stop, |_| true, call).await? {
        Answer::Done(o) => Ok(o),
        Answer::Refused(_) => {
            unreachable!("every error counts as transient here, so none is a refusal")
        }
    }
}

/// What [`isolate_refused`] did with a list of items.
#[derive(Debug, PartialEq)]
pub struct Isolated<O, E> {
    /// The ranges of items that went through, in item order, each with the
    /// outcome of its call.
    pub done: Vec<(Range<usize>, O)>,
    /// The items refused on their own, in item order, with the refusal.
    pub refused: Vec<(usize, E)>,
}

/// Gets items `0..n` through `call`, which takes a range of them: all at
/// once first; a refused range is split in halves, tried left first (so
/// items go through in their order, which overwriting writes need), until
/// every refused item stands alone. Each item ends in exactly one of
/// `done` and `refused`; with k refused items that takes at most
/// 1 + 2·k·⌈log₂ n⌉ calls. A call that fails once for several items and
/// goes through for each half (no single culprit) leaves nothing refused.
pub async fn isolate_refused<O, E, F, Fut>(n: usize, mut call: F) -> Result<Isolated<O, E>, Stopped>
where
    F: FnMut(Range<usize>) -> Fut,
    Fut: Future<Output = Result<Answer<O, E>, Stopped>>,
{
    let mut out = Isolated {
        done: Vec::new(),
        refused: Vec::new(),
    };
    // ranges still to try, the next one last
    let mut todo = Vec::new();
    if n > 0 {
        todo.push(0..n);
    }
    while let Some(range) = todo.pop() {
        match call(range.clone()).await? {
            Answer::Done(o) => out.done.push((range, o)),
            Answer::Refused(e) if range.len() == 1 => out.refused.push((range.start, e)),
            Answer::Refused(_) => {
                let mid = range.start + range.len() / 2;
                todo.push(mid..range.end);
                todo.push(range.start..mid);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::BTreeSet;

    #[test]
    fn retry_delays_grow_jittered_stay_bounded_and_never_end() {
        let delays: Vec<Duration> = retry_delays().take(1_000).collect();
        assert_eq!(delays.len(), 1_000, "the retries never give up");
        assert!(
            delays[0] >= Duration::from_millis(50) && delays[0] < Duration::from_millis(100),
            "first wait {:?}",
            delays[0]
        );
        assert!(
            delays.iter().all(|d| *d <= MAX_RETRY_DELAY),
            "a wait over the bound"
        );
        let late = &delays[100..];
        assert!(
            late.iter().all(|d| *d >= MAX_RETRY_DELAY / 2),
            "the base reaches its cap"
        );
        assert!(
            late.iter().any(|d| *d != late[0]),
            "jittered: the capped waits are not all equal"
        );
    }

    /// A fake store over items `0..n` that refuses any call containing one
    /// of `bad`, recording each call's range.
    struct FakeStore {
        bad: BTreeSet<usize>,
        calls: RefCell<Vec<Range<usize>>>,
    }

    impl FakeStore {
        fn new(bad: &[usize]) -> FakeStore {
            FakeStore {
                bad: bad.iter().copied().collect(),
                calls: RefCell::new(Vec::new()),
            }
        }

        async fn call(&self, r: Range<usize>) -> Result<Answer<usize, String>, Stopped> {
            self.calls.borrow_mut().push(r.clone());
            Ok(match r.clone().find(|i| self.bad.contains(i)) {
                Some(i) => Answer::Refused(format!("item {i} refused")),
                None => Answer::Done(r.len()),
            })
        }
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a test runtime")
            .block_on(f)
    }

    /// Every item is in exactly one of done and refused, done in order.
    fn assert_partition(iso: &Isolated<usize, String>, n: usize, bad: &[usize]) {
        let refused: Vec<usize> = iso.refused.iter().map(|(i, _)| *i).collect();
        assert_eq!(refused, bad, "the refused items, each once, in order");
        let mut seen = Vec::new();
        for (r, len) in &iso.done {
            assert_eq!(*len, r.len());
            seen.extend(r.clone());
        }
        let good: Vec<usize> = (0..n).filter(|i| !bad.contains(i)).collect();
        assert_eq!(seen, good, "every other item went through once, in order");
    }

    #[test]
    fn nothing_refused_takes_one_call() {
        let store = FakeStore::new(&[]);
        let iso = block_on(isolate_refused(10, |r| store.call(r))).expect("not stopped");
        assert_partition(&iso, 10, &[]);
        assert_eq!(*store.calls.borrow(), vec![0..10]);
    }

    #[test]
    fn an_empty_list_takes_no_call() {
        let store = FakeStore::new(&[]);
        let iso = block_on(isolate_refused(0, |r| store.call(r))).expect("not stopped");
        assert!(iso.done.is_empty() && iso.refused.is_empty());
        assert!(store.calls.borrow().is_empty());
    }

    #[test]
    fn refused_items_are_isolated_and_the_others_go_through_in_order() {
        for (n, bad) in [
            (16, vec![3, 11]),
            (1, vec![0]),
            (7, vec![6]),
            (100, vec![0, 1, 2, 50, 99]),
            (4, vec![0, 1, 2, 3]),
        ] {
            let store = FakeStore::new(&bad);
            let iso = block_on(isolate_refused(n, |r| store.call(r))).expect("not stopped");
            assert_partition(&iso, n, &bad);
            for (i, e) in &iso.refused {
                assert_eq!(*e, format!("item {i} refused"), "the store's own error");
            }
            let calls = store.calls.borrow().len();
            let log2 = (n as f64).log2().ceil() as usize;
            assert!(
                calls <= 1 + 2 * bad.len() * log2.max(1),
                "{calls} calls for {} refused of {n}",
                bad.len()
            );
        }
    }

    #[test]
    fn a_failure_with_no_single_culprit_refuses_nothing() {
        // the store refuses 0..4 as a whole only, then takes each half
        let calls = Cell::new(0);
        let iso = block_on(isolate_refused(4, |r| {
            calls.set(calls.get() + 1);
            async move {
                Ok(if r.len() == 4 {
                    Answer::Refused("together".to_string())
                } else {
                    Answer::Done(r.len())
                })
            }
        }))
        .expect("not stopped");
        assert_partition(&iso, 4, &[]);
        assert_eq!(calls.get(), 3);
    }

    #[test]
    fn a_stop_ends_the_isolation() {
        let got = block_on(isolate_refused(8, |r| async move {
            if r.len() == 8 {
                Ok(Answer::<usize, String>::Refused("bad".into()))
            } else {
                Err(Stopped)
            }
        }));
        assert_eq!(got, Err(Stopped));
    }

    /// A call failing transiently `fails` times, then answering `then`.
    fn flaky(
        fails: usize,
        then: Result<u32, String>,
    ) -> (Cell<usize>, impl Fn(&Cell<usize>) -> Result<u32, String>) {
        (Cell::new(0), move |n: &Cell<usize>| {
            n.set(n.get() + 1);
            if n.get() <= fails {
                Err("transient: connection refused".to_string())
            } else {
                then.clone()
            }
        })
    }

    /// The fake errors' classification: `transient: …` is, others are not.
    const TRANSIENT: fn(&String) -> bool = |e| e.starts_with("transient");

    #[test]
    fn transient_errors_are_retried_until_the_call_goes_through() {
        let (_tx, stop) = watch::channel(false);
        let (n, f) = flaky(5, Ok(7));
        let got = block_on(until_answered("fake", &stop, TRANSIENT, || {
            std::future::ready(f(&n))
        }));
        assert_eq!(got, Ok(Answer::Done(7)));
        assert_eq!(n.get(), 6, "five failures, then the call that went through");
    }

    #[test]
    fn a_permanent_error_is_a_refusal_at_once() {
        let (_tx, stop) = watch::channel(false);
        let (n, f) = flaky(0, Err("WRONGTYPE".to_string()));
        let got = block_on(until_answered("fake", &stop, TRANSIENT, || {
            std::future::ready(f(&n))
        }));
        assert_eq!(got, Ok(Answer::Refused("WRONGTYPE".to_string())));
        assert_eq!(n.get(), 1);
    }

    #[test]
    fn a_stop_ends_the_retries() {
        let (tx, stop) = watch::channel(false);
        let (n, f) = flaky(usize::MAX, Ok(1));
        let got = block_on(async {
            let retrying = until_answered("fake", &stop, TRANSIENT, || std::future::ready(f(&n)));
            let stopping = async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                let _ = tx.send(true);
                std::future::pending::<()>().await;
            };
            tokio::select! {
                r = retrying => r,
                _ = stopping => unreachable!("the stop branch never completes"),
            }
        });
        assert_eq!(got, Err(Stopped));
        // 60 s of (paused) time at waits of at least 2.5 s once capped
        assert!(n.get() > 5 && n.get() < 60, "{} attempts", n.get());
    }

    #[test]
    fn a_dropped_stop_sender_never_stops() {
        let (tx, stop) = watch::channel(false);
        drop(tx);
        let (n, f) = flaky(3, Ok(2));
        let got = block_on(until_answered("fake", &stop, TRANSIENT, || {
            std::future::ready(f(&n))
        }));
        assert_eq!(got, Ok(Answer::Done(2)));
    }

    #[test]
    fn isolation_keeps_its_progress_across_an_outage() {
        // the store is unreachable for the first three calls, and refuses item 5
        let (_tx, stop) = watch::channel(false);
        let store = FakeStore::new(&[5]);
        let outage = Cell::new(3);
        let iso = block_on(isolate_refused(8, |r| {
            let (store, outage, stop) = (&store, &outage, &stop);
            async move {
                let got = until_answered("fake", stop, TRANSIENT, || {
                    let r = r.clone();
                    async move {
                        if outage.get() > 0 {
                            outage.set(outage.get() - 1);
                            return Err("transient: connection reset".to_string());
                        }
                        match store.call(r).await {
                            Ok(Answer::Done(n)) => Ok(n),
                            Ok(Answer::Refused(e)) => Err(e),
                            Err(Stopped) => unreachable!("the fake store never stops"),
                        }
                    }
                })
                .await?;
                Ok(got)
            }
        }))
        .expect("not stopped");
        assert_partition(&iso, 8, &[5]);
        assert_eq!(outage.get(), 0);
    }
}
