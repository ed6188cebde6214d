//! The delivery worker: takes each window's [`Batch`] from the agent and
//! gets it to the backend, strictly in sequence order, losing nothing that
//! the spool has room for.
//!
//! How a window travels:
//! - [`DeliveryHandle::submit`] puts it in a bounded in-memory queue and
//!   returns at once. When the queue is full the window goes straight to the
//!   [`Spool`] instead, so sampling never waits for the network.
//! - While the spool holds anything, it comes first: queued windows are
//!   moved into it (the spool orders by sequence, so a window queued before
//!   an overflow still goes out before the overflowed ones), and the oldest
//!   spooled window is sent. Otherwise the worker takes the next queued one.
//! - Profiles that fail with a retryable error are sent again, alone (never
//!   the ones already delivered), after an exponential backoff with full
//!   jitter, or after the server's `Retry-After` if that is longer. Once a
//!   window has been retried for its budget, what is left of it is spooled
//!   and the worker keeps probing the backend from the spool, backing off.
//! - Profiles the backend rejects are logged with its message, counted and
//!   dropped: sending them again cannot help.
//! - [`DeliveryHandle::shutdown`] stops taking windows, tries to deliver
//!   everything within a grace period, and spools what is left. After a
//!   restart the spool is not empty, so the loop above replays it first.
//! - A spooled window's send is bracketed in the spool ([`Spool::begin_send`],
//!   then [`Spool::remove`] or [`Spool::end_send`]), so a restart resends
//!   only a window whose send a crash interrupted, and counts it.

use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::{Batch, Spool, UploadError, Uploader};
use crate::agent::metrics::Metrics;
use crate::util::backoff::Backoff;

/// How the worker queues, retries and gives up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryOptions {
    /// Windows held in memory before new ones go to the spool.
    pub queue_capacity: usize,
    /// First delay before a retry.
    pub initial_backoff: Duration,
    /// Longest delay between retries (before `Retry-After`).
    pub max_backoff: Duration,
    /// How long one fresh window is retried before what is left of it is
    /// spooled. About one window length keeps the queue from growing.
    pub retry_budget_per_window: Duration,
}

impl Default for DeliveryOptions {
    /// A queue of 16 windows, backoff from 1 s to 30 s, and a 10 s budget
    /// (the default window length).
    fn default() -> DeliveryOptions {
        DeliveryOptions {
            queue_capacity: 16,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            retry_budget_per_window: Duration::from_secs(10),
        }
    }
}

impl DeliveryOptions {
    /// The defaults, with a retry budget of one `window`.
    pub fn for_window(window: Duration) -> DeliveryOptions {
        DeliveryOptions {
            retry_budget_per_window: window,
            ..DeliveryOptions::default()
        }
    }
}

/// Where [`DeliveryHandle::submit`] put a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submission {
    /// In the in-memory queue.
    Queued,
    /// On disk, because the queue was full or delivery has shut down.
    Spooled,
    /// Nowhere: the spool could not be written, or was full and this window
    /// was its oldest. Logged and counted in `taskprof_profiles_failed_total`.
    Lost,
}

/// What the worker did over its life, and what it left in the spool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliverySummary {
    /// Profiles the backend accepted.
    pub profiles_uploaded: u64,
    /// Profiles the backend rejected (dropped).
    pub profiles_rejected: u64,
    /// Windows waiting in the spool when the worker stopped.
    pub windows_spooled: usize,
    /// Size of the spool when the worker stopped.
    pub spool_bytes: u64,
    /// Windows the spool evicted (or could not take) to respect its bound.
    pub windows_evicted: u64,
    /// Windows lost because the spool could not be written.
    pub windows_lost: u64,
}

/// Starts the delivery worker.
#[derive(Debug)]
pub struct Delivery;

impl Delivery {
    /// Spawns the worker on the current Tokio runtime. It delivers through
    /// `uploader`, keeps undeliverable windows in `spool` (replaying what an
    /// earlier run left there first), and reports to `metrics`.
    ///
    /// Returns the handle to submit windows with, and the worker's task,
    /// which ends after [`DeliveryHandle::shutdown`] (or once every handle is
    /// dropped, spooling whatever was still queued).
    pub fn start(
        uploader: Arc<dyn Uploader>,
        spool: Spool,
        metrics: Metrics,
        options: DeliveryOptions,
    ) -> (DeliveryHandle, JoinHandle<()>) {
        let (queue_tx, queue_rx) = mpsc::channel(options.queue_capacity.max(1));
        let (shutdown_tx, shutdown_rx) = watch::channel(None);
        let (summary_tx, summary_rx) = oneshot::channel();
        let spool = Arc::new(Mutex::new(spool));
        let wake = Arc::new(Notify::new());
        let worker = Worker {
            backoff: Backoff::full_jitter(options.initial_backoff, options.max_backoff),
            uploader,
            spool: spool.clone(),
            metrics: metrics.clone(),
            options,
            queue: queue_rx,
            wake: wake.clone(),
            shutdown: shutdown_rx,
            not_before: Instant::now(),
            last_failed: None,
            summary: DeliverySummary::default(),
        };
        let task = tokio::spawn(worker.run(summary_tx));
        let handle = DeliveryHandle {
            shared: Arc::new(Shared {
                queue: Mutex::new(Some(queue_tx)),
                spool,
                wake,
                shutdown: shutdown_tx,
                summary: Mutex::new(Some(summary_rx)),
                metrics,
            }),
        };
        (handle, task)
    }
}

/// Submits windows to the worker and shuts it down. Clones share the worker.
#[derive(Clone)]
pub struct DeliveryHandle {
    shared: Arc<Shared>,
}

struct Shared {
    /// `None` once shutdown has begun.
    queue: Mutex<Option<mpsc::Sender<Batch>>>,
    spool: Arc<Mutex<Spool>>,
    wake: Arc<Notify>,
    shutdown: watch::Sender<Option<Instant>>,
    summary: Mutex<Option<oneshot::Receiver<DeliverySummary>>>,
    metrics: Metrics,
}

impl std::fmt::Debug for DeliveryHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryHandle").finish_non_exhaustive()
    }
}

impl DeliveryHandle {
    /// Hands a window over for delivery. Never waits for the network: when
    /// the queue is full, or after shutdown, the window is written to the
    /// spool right away.
    pub fn submit(&self, batch: Batch) -> Submission {
        let overflow = {
            // Sending under the lock means shutdown cannot slip in between
            // and leave this window in a queue nobody reads.
            let queue = lock(&self.shared.queue);
            let Some(tx) = queue.as_ref() else {
                return keep(&mut lock(&self.shared.spool), &self.shared.metrics, &batch);
            };
            match tx.try_send(batch) {
                Ok(()) => return Submission::Queued,
                Err(TrySendError::Full(batch) | TrySendError::Closed(batch)) => batch,
            }
        };
        tracing::debug!(
            sequence = overflow.sequence,
            "the delivery queue is full; spooling the window"
        );
        let outcome = keep(&mut lock(&self.shared.spool), &self.shared.metrics, &overflow);
        self.shared.wake.notify_one();
        outcome
    }

    /// Stops taking windows and gives the worker `grace` to deliver what is
    /// queued and spooled; whatever is still undelivered then is written to
    /// the spool for the next run. Returns what the worker did.
    pub async fn shutdown(&self, grace: Duration) -> DeliverySummary {
        let deadline = Instant::now() + grace;
        lock(&self.shared.queue).take();
        self.shared.shutdown.send_modify(|current| {
            *current = Some(current.map_or(deadline, |earlier| earlier.min(deadline)));
        });
        let receiver = lock(&self.shared.summary).take();
        let summary = match receiver {
            Some(receiver) => receiver.await.ok(),
            None => None,
        };
        summary.unwrap_or_else(|| {
            // Shut down already, or the worker died: report the spool as it is.
            let spool = lock(&self.shared.spool);
            DeliverySummary {
                windows_spooled: spool.len(),
                spool_bytes: spool.total_bytes(),
                windows_evicted: spool.evictions(),
                ..DeliverySummary::default()
            }
        })
    }
}

/// Writes a window to the spool, accounting for it if it cannot be kept.
fn keep(spool: &mut Spool, metrics: &Metrics, batch: &Batch) -> Submission {
    match spool.push(batch) {
        Ok(true) => Submission::Spooled,
        Ok(false) => Submission::Lost,
        Err(err) => {
            metrics.profiles_dropped(batch.profiles.len() as u64, batch.samples());
            tracing::error!(
                sequence = batch.sequence,
                profiles = batch.profiles.len(),
                error = %err,
                "failed to spool an undelivered window; its profiles are lost"
            );
            Submission::Lost
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves the data usable: the spool's
    // index may at worst miss a file, which the next start finds again.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Worker {
    uploader: Arc<dyn Uploader>,
    spool: Arc<Mutex<Spool>>,
    metrics: Metrics,
    options: DeliveryOptions,
    queue: mpsc::Receiver<Batch>,
    wake: Arc<Notify>,
    shutdown: watch::Receiver<Option<Instant>>,
    backoff: Backoff,
    /// No attempt before this instant: the backoff after the last failure.
    not_before: Instant,
    /// The window whose last attempt failed; sending it again is a retry.
    last_failed: Option<u64>,
    summary: DeliverySummary,
}

impl Worker {
    async fn run(mut self, done: oneshot::Sender<DeliverySummary>) {
        loop {
            if self.deadline().is_some_and(|deadline| Instant::now() >= deadline) {
                break;
            }
            if !lock(&self.spool).is_empty() {
                self.queue_to_spool().await;
                if self.deliver_spooled().await.is_break() {
                    break;
                }
                continue;
            }
            tokio::select! {
                biased;
                batch = self.queue.recv() => match batch {
                    Some(batch) => self.deliver_fresh(batch).await,
                    // Shutdown began (or every handle is gone) and the queue is empty.
                    None => break,
                },
                // Something was spooled while the queue was full.
                () = self.wake.notified() => {}
                // Shutdown: the loop re-checks the deadline.
                _ = self.shutdown.changed() => {}
            }
        }
        self.finish(done).await;
    }

    /// When to stop: the shutdown deadline, or now if every handle is gone
    /// without a shutdown.
    fn deadline(&self) -> Option<Instant> {
        let deadline = *self.shutdown.borrow();
        match deadline {
            Some(deadline) => Some(deadline),
            None if self.shutdown.has_changed().is_err() => Some(Instant::now()),
            None => None,
        }
    }

    /// Sends a window from the queue, retrying within its budget; spools
    /// what is left if that is not enough.
    async fn deliver_fresh(&mut self, batch: Batch) {
        let budget_end = Instant::now() + self.options.retry_budget_per_window;
        let mut pending = batch;
        loop {
            pending = self.attempt(pending).await;
            if pending.profiles.is_empty() {
                return;
            }
            if self.not_before > budget_end || !self.pause_until(self.not_before).await {
                tracing::warn!(
                    sequence = pending.sequence,
                    profiles = pending.profiles.len(),
                    "could not deliver the window in time; spooling it and retrying from the spool"
                );
                self.spool_batches(vec![pending]).await;
                return;
            }
        }
    }

    /// One attempt at the oldest spooled window, after the backoff.
    async fn deliver_spooled(&mut self) -> ControlFlow<()> {
        if !self.pause_until(self.not_before).await {
            return ControlFlow::Break(());
        }
        let batch = match self.with_spool(Spool::oldest).await {
            Some(Ok(Some(batch))) => batch,
            Some(Ok(None)) => return ControlFlow::Continue(()),
            failed => {
                if let Some(Err(err)) = failed {
                    tracing::error!(error = %err, "failed to read the spool");
                }
                // Back off so that a broken disk is not hammered in a loop.
                self.not_before = Instant::now() + self.backoff.next_delay();
                return ControlFlow::Continue(());
            }
        };
        let sequence = batch.sequence;
        let sent = batch.profiles.len();
        if let Some(Err(err)) = self.with_spool(move |spool| spool.begin_send(sequence)).await {
            // Delivery matters more than knowing about a crash during it.
            tracing::warn!(
                error = %err,
                "failed to record the start of a send; a crash during it would send the window again uncounted"
            );
        }
        let rest = self.attempt(batch).await;
        if rest.profiles.is_empty() {
            // The first thing after the backend's answer: once the removal
            // is on disk, no restart sends the window again.
            if let Some(Err(err)) = self.with_spool(move |spool| spool.remove(sequence)).await {
                tracing::error!(error = %err, "failed to remove a delivered window from the spool");
            }
            return ControlFlow::Continue(());
        }
        if rest.profiles.len() < sent {
            // Keep only what is still undelivered, so nothing is sent twice.
            self.spool_batches(vec![rest]).await;
        }
        if let Some(Err(err)) = self.with_spool(move |spool| spool.end_send(sequence)).await {
            tracing::warn!(error = %err, "failed to record the end of a send");
        }
        ControlFlow::Continue(())
    }

    /// Sends the profiles of `batch` once and returns the ones to retry.
    async fn attempt(&mut self, batch: Batch) -> Batch {
        let Batch {
            sequence,
            start,
            end,
            profiles,
            shared,
        } = batch;
        let count = profiles.len();
        let mut rest = Batch {
            sequence,
            start,
            end,
            profiles: Vec::new(),
            shared: Vec::new(),
        };
        if count == 0 {
            return rest;
        }
        if self.last_failed == Some(sequence) {
            self.metrics.profiles_retried.inc_by(count as u64);
        }
        let window = Batch {
            sequence,
            start,
            end,
            profiles,
            shared,
        };
        let span = tracing::info_span!("deliver", sequence, protocol = self.uploader.name(), profiles = count);
        let results = {
            let send = self.uploader.send(&window.profiles, &window);
            let cut_short = shutdown_deadline(self.shutdown.clone());
            async {
                tokio::select! {
                    results = send => results,
                    () = cut_short => vec![Err(UploadError::retryable("cut short by shutdown")); count],
                }
            }
            .instrument(span.clone())
            .await
        };
        let _entered = span.enter();
        let mut results = results.into_iter();
        let mut retry_after: Option<Duration> = None;
        let mut first_reason = None;
        for profile in window.profiles {
            let result = results.next().unwrap_or_else(|| {
                Err(UploadError::retryable(
                    "the uploader returned no result for this profile",
                ))
            });
            match result {
                Ok(()) => {
                    self.metrics.profiles_uploaded.inc();
                    self.summary.profiles_uploaded += 1;
                }
                Err(UploadError::Rejected { status, message }) => {
                    self.metrics.profiles_dropped(1, profile.samples);
                    self.summary.profiles_rejected += 1;
                    tracing::warn!(
                        status,
                        service = profile.label("service_name").unwrap_or_default(),
                        message = %message,
                        "the backend rejected a profile; dropping it"
                    );
                }
                Err(UploadError::Retryable {
                    reason,
                    retry_after: asked,
                }) => {
                    retry_after = retry_after.max(asked);
                    first_reason.get_or_insert(reason);
                    rest.profiles.push(profile);
                }
            }
        }
        // What is left still refers to the window's shared bytes.
        rest.shared = window.shared;
        if rest.profiles.is_empty() {
            self.backoff.reset();
            self.last_failed = None;
            self.not_before = Instant::now();
        } else {
            let delay = self.backoff.next_delay().max(retry_after.unwrap_or_default());
            self.not_before = Instant::now() + delay;
            self.last_failed = Some(sequence);
            tracing::warn!(
                failed = rest.profiles.len(),
                of = count,
                retry_in = ?delay,
                reason = first_reason.as_deref().unwrap_or_default(),
                "upload failed; will retry"
            );
        }
        rest
    }

    /// Sleeps until `wake`. Returns false, early, if shutdown must happen
    /// before then.
    async fn pause_until(&mut self, wake: Instant) -> bool {
        loop {
            if self.deadline().is_some_and(|deadline| wake > deadline) {
                return false;
            }
            if Instant::now() >= wake {
                return true;
            }
            tokio::select! {
                () = tokio::time::sleep_until(wake) => return true,
                // A new deadline, or every handle gone: check again.
                _ = self.shutdown.changed() => {}
            }
        }
    }

    /// Moves whatever is queued into the spool, behind nothing: the spool
    /// orders by sequence.
    async fn queue_to_spool(&mut self) {
        let mut batches = Vec::new();
        while let Ok(batch) = self.queue.try_recv() {
            batches.push(batch);
        }
        if !batches.is_empty() {
            self.spool_batches(batches).await;
        }
    }

    async fn spool_batches(&mut self, batches: Vec<Batch>) {
        let metrics = self.metrics.clone();
        let outcomes = self
            .with_spool(move |spool| {
                batches
                    .iter()
                    .map(|batch| keep(spool, &metrics, batch))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
        let lost = outcomes.iter().filter(|o| **o == Submission::Lost).count();
        self.summary.windows_lost += lost as u64;
    }

    /// Runs a spool operation off the async workers, since it does file I/O.
    /// `None` only if the operation panicked.
    async fn with_spool<T: Send + 'static>(&self, op: impl FnOnce(&mut Spool) -> T + Send + 'static) -> Option<T> {
        let spool = self.spool.clone();
        match tokio::task::spawn_blocking(move || op(&mut lock(&spool))).await {
            Ok(value) => Some(value),
            Err(err) => {
                tracing::error!(error = %err, "a spool operation failed");
                None
            }
        }
    }

    async fn finish(mut self, done: oneshot::Sender<DeliverySummary>) {
        self.queue.close();
        let mut left = Vec::new();
        while let Ok(batch) = self.queue.try_recv() {
            left.push(batch);
        }
        if !left.is_empty() {
            self.spool_batches(left).await;
        }
        {
            let spool = lock(&self.spool);
            self.summary.windows_spooled = spool.len();
            self.summary.spool_bytes = spool.total_bytes();
            self.summary.windows_evicted = spool.evictions();
        }
        tracing::info!(
            uploaded = self.summary.profiles_uploaded,
            rejected = self.summary.profiles_rejected,
            spooled_windows = self.summary.windows_spooled,
            spool_bytes = self.summary.spool_bytes,
            "delivery stopped"
        );
        // The handle may be gone; the summary is logged either way.
        let _ = done.send(self.summary);
    }
}

/// Completes at the shutdown deadline, or at once when every handle is gone.
async fn shutdown_deadline(mut shutdown: watch::Receiver<Option<Instant>>) {
    loop {
        let deadline = *shutdown.borrow_and_update();
        if let Some(deadline) = deadline {
            tokio::time::sleep_until(deadline).await;
            return;
        }
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashSet, VecDeque};
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::UNIX_EPOCH;

    use tokio::sync::Semaphore;

    use super::*;
    use crate::upload::{SendFuture, SeriesProfile, SpoolConfig};

    type Step = Box<dyn Fn(usize) -> Result<(), UploadError> + Send>;

    /// An in-memory backend with scripted answers.
    #[derive(Default)]
    struct FakeBackend {
        /// Every profile fails with a 503 while set.
        down: AtomicBool,
        /// One step per call, answering for each profile by its index in the
        /// call; all succeed once the script runs out.
        script: Mutex<VecDeque<Step>>,
        /// Each call waits for a permit, when set.
        gate: Option<Arc<Semaphore>>,
        /// (when, ids sent) per call.
        calls: Mutex<Vec<(Instant, Vec<String>)>>,
        /// Ids delivered, in order.
        delivered: Mutex<Vec<String>>,
    }

    impl FakeBackend {
        fn script(steps: Vec<Step>) -> FakeBackend {
            FakeBackend {
                script: Mutex::new(steps.into()),
                ..FakeBackend::default()
            }
        }

        fn delivered(&self) -> Vec<String> {
            lock(&self.delivered).clone()
        }

        fn calls(&self) -> Vec<(Instant, Vec<String>)> {
            lock(&self.calls).clone()
        }
    }

    impl Uploader for FakeBackend {
        fn send<'a>(&'a self, profiles: &'a [SeriesProfile], _window: &'a Batch) -> SendFuture<'a> {
            Box::pin(async move {
                let ids: Vec<String> = profiles.iter().map(id).collect();
                lock(&self.calls).push((Instant::now(), ids.clone()));
                if let Some(gate) = &self.gate {
                    if let Ok(permit) = gate.acquire().await {
                        permit.forget();
                    }
                }
                let step = lock(&self.script).pop_front();
                let down = self.down.load(Ordering::SeqCst);
                let results: Vec<_> = (0..profiles.len())
                    .map(|index| match (&step, down) {
                        (_, true) => Err(UploadError::retryable("503")),
                        (Some(step), false) => step(index),
                        (None, false) => Ok(()),
                    })
                    .collect();
                let mut delivered = lock(&self.delivered);
                for (id, result) in ids.into_iter().zip(&results) {
                    if result.is_ok() {
                        delivered.push(id);
                    }
                }
                results
            })
        }

        fn name(&self) -> &'static str {
            "fake"
        }
    }

    fn id(profile: &SeriesProfile) -> String {
        profile.label("id").unwrap_or_default().to_string()
    }

    fn batch(sequence: u64, profiles: usize) -> Batch {
        let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000 + sequence * 10);
        Batch {
            sequence,
            start,
            end: start + Duration::from_secs(10),
            profiles: (0..profiles)
                .map(|i| SeriesProfile {
                    labels: vec![
                        ("service_name".to_string(), "svc".to_string()),
                        ("id".to_string(), format!("{sequence}-{i}")),
                    ],
                    payload: vec![7; 64],
                    samples: 1,
                })
                .collect(),
            shared: Vec::new(),
        }
    }

    fn quick() -> DeliveryOptions {
        DeliveryOptions {
            queue_capacity: 4,
            initial_backoff: Duration::from_millis(2),
            max_backoff: Duration::from_millis(10),
            retry_budget_per_window: Duration::from_millis(30),
        }
    }

    fn spool(dir: &Path, metrics: &Metrics) -> Spool {
        let config = SpoolConfig {
            dir: dir.to_path_buf(),
            max_bytes: 256 << 20,
        };
        Spool::open(&config, metrics.clone()).expect("open spool")
    }

    fn start(backend: &Arc<FakeBackend>, dir: &Path, options: DeliveryOptions) -> (DeliveryHandle, Metrics) {
        let metrics = Metrics::new();
        let uploader: Arc<dyn Uploader> = backend.clone();
        let (handle, _task) = Delivery::start(uploader, spool(dir, &metrics), metrics.clone(), options);
        (handle, metrics)
    }

    async fn wait_for(what: &str, done: impl Fn() -> bool) {
        let give_up = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < give_up, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Ids of `windows` windows of `per_window` profiles, in delivery order.
    fn expected(windows: std::ops::RangeInclusive<u64>, per_window: usize) -> Vec<String> {
        windows
            .flat_map(|s| (0..per_window).map(move |i| format!("{s}-{i}")))
            .collect()
    }

    fn assert_in_order_once(delivered: &[String], expected: &[String]) {
        let unique: HashSet<&String> = delivered.iter().collect();
        assert_eq!(
            unique.len(),
            delivered.len(),
            "a profile was delivered twice: {delivered:?}"
        );
        let mut sorted = delivered.to_vec();
        sorted.sort_by_key(|id| {
            let (window, index) = id.split_once('-').expect("id");
            (
                window.parse::<u64>().expect("window"),
                index.parse::<u64>().expect("index"),
            )
        });
        let windows = |ids: &[String]| -> Vec<u64> {
            ids.iter()
                .map(|id| id.split('-').next().expect("id").parse().expect("window"))
                .collect()
        };
        assert_eq!(windows(delivered), windows(&sorted), "windows out of order");
        assert_eq!(sorted, expected);
    }

    #[tokio::test]
    async fn a_burst_of_5xx_then_recovery_keeps_order_and_loses_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = Arc::new(FakeBackend::default());
        backend.down.store(true, Ordering::SeqCst);
        let (handle, metrics) = start(&backend, dir.path(), quick());
        for sequence in 1..=10 {
            handle.submit(batch(sequence, 3));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            metrics.profiles_spooled.get() > 0,
            "the outage outlasted the retry budget"
        );
        backend.down.store(false, Ordering::SeqCst);
        wait_for("every profile", || backend.delivered().len() == 30).await;
        assert_in_order_once(&backend.delivered(), &expected(1..=10, 3));
        assert!(metrics.profiles_retried.get() > 0);
        assert_eq!(metrics.profiles_uploaded.get(), 30);
        let summary = handle.shutdown(Duration::from_secs(1)).await;
        assert_eq!(summary.windows_spooled, 0);
        assert_eq!(summary.profiles_uploaded, 30);
    }

    #[tokio::test]
    async fn only_the_failed_profiles_are_sent_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = Arc::new(FakeBackend::script(vec![Box::new(|index| {
            if index == 1 {
                Err(UploadError::retryable("timeout"))
            } else {
                Ok(())
            }
        })]));
        let (handle, metrics) = start(&backend, dir.path(), quick());
        handle.submit(batch(1, 3));
        wait_for("every profile", || backend.delivered().len() == 3).await;
        let calls: Vec<Vec<String>> = backend.calls().into_iter().map(|(_, ids)| ids).collect();
        assert_eq!(calls, vec![expected(1..=1, 3), vec!["1-1".to_string()]]);
        assert_eq!(metrics.profiles_retried.get(), 1);
        handle.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn retry_after_delays_the_next_attempt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = Arc::new(FakeBackend::script(vec![Box::new(|_| {
            Err(UploadError::Retryable {
                reason: "429".to_string(),
                retry_after: Some(Duration::from_millis(300)),
            })
        })]));
        let options = DeliveryOptions {
            retry_budget_per_window: Duration::from_secs(5),
            ..quick()
        };
        let (handle, _) = start(&backend, dir.path(), options);
        handle.submit(batch(1, 1));
        wait_for("the profile", || backend.delivered().len() == 1).await;
        let calls = backend.calls();
        assert_eq!(calls.len(), 2);
        assert!(calls[1].0 - calls[0].0 >= Duration::from_millis(300));
        handle.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn rejected_profiles_are_dropped_not_retried() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = Arc::new(FakeBackend::script(vec![Box::new(|index| {
            if index == 0 {
                Err(UploadError::Rejected {
                    status: 400,
                    message: "invalid pprof".to_string(),
                })
            } else {
                Ok(())
            }
        })]));
        let (handle, metrics) = start(&backend, dir.path(), quick());
        handle.submit(batch(1, 2));
        wait_for("the good profile", || backend.delivered().len() == 1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(backend.calls().len(), 1);
        assert_eq!(metrics.profiles_failed.get(), 1);
        let summary = handle.shutdown(Duration::from_secs(1)).await;
        assert_eq!((summary.profiles_rejected, summary.windows_spooled), (1, 0));
    }

    #[tokio::test]
    async fn a_full_queue_sends_windows_to_the_spool_and_order_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let gate = Arc::new(Semaphore::new(0));
        let backend = Arc::new(FakeBackend {
            gate: Some(gate.clone()),
            ..FakeBackend::default()
        });
        let options = DeliveryOptions {
            queue_capacity: 2,
            ..quick()
        };
        let (handle, metrics) = start(&backend, dir.path(), options);
        assert_eq!(handle.submit(batch(1, 1)), Submission::Queued);
        wait_for("the worker to take window 1", || backend.calls().len() == 1).await;
        let outcomes: Vec<Submission> = (2..=5).map(|s| handle.submit(batch(s, 1))).collect();
        assert_eq!(
            outcomes,
            vec![
                Submission::Queued,
                Submission::Queued,
                Submission::Spooled,
                Submission::Spooled
            ]
        );
        assert_eq!(metrics.profiles_spooled.get(), 2);
        gate.add_permits(100);
        wait_for("every window", || backend.delivered().len() == 5).await;
        assert_in_order_once(&backend.delivered(), &expected(1..=5, 1));
        handle.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn shutdown_spools_what_is_undelivered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = Arc::new(FakeBackend::default());
        backend.down.store(true, Ordering::SeqCst);
        let options = DeliveryOptions {
            retry_budget_per_window: Duration::from_secs(60),
            ..quick()
        };
        let (handle, _) = start(&backend, dir.path(), options);
        for sequence in 1..=3 {
            handle.submit(batch(sequence, 2));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let began = Instant::now();
        let summary = handle.shutdown(Duration::from_millis(50)).await;
        assert!(began.elapsed() < Duration::from_secs(2), "shutdown overran its grace");
        assert_eq!(summary.windows_spooled, 3);
        assert_eq!(summary.profiles_uploaded, 0);
        assert_eq!(
            handle.submit(batch(4, 1)),
            Submission::Spooled,
            "late windows are kept too"
        );

        let mut reopened = spool(dir.path(), &Metrics::new());
        assert_eq!(reopened.len(), 4);
        assert_eq!(reopened.oldest().expect("read"), Some(batch(1, 2)));
    }

    #[tokio::test]
    async fn shutdown_flushes_a_healthy_backend_within_grace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = Arc::new(FakeBackend::default());
        let (handle, _) = start(&backend, dir.path(), quick());
        for sequence in 1..=4 {
            handle.submit(batch(sequence, 2));
        }
        let summary = handle.shutdown(Duration::from_secs(5)).await;
        assert_eq!(summary.profiles_uploaded, 8);
        assert_eq!(summary.windows_spooled, 0);
        assert_in_order_once(&backend.delivered(), &expected(1..=4, 2));
    }

    #[tokio::test]
    async fn a_restart_replays_the_spool_before_new_windows() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut earlier = spool(dir.path(), &Metrics::new());
            earlier.push(&batch(1, 2)).expect("push");
            earlier.push(&batch(2, 2)).expect("push");
        }
        let backend = Arc::new(FakeBackend::default());
        let (handle, _) = start(&backend, dir.path(), quick());
        handle.submit(batch(3, 2));
        wait_for("every profile", || backend.delivered().len() == 6).await;
        assert_in_order_once(&backend.delivered(), &expected(1..=3, 2));
        let summary = handle.shutdown(Duration::from_secs(1)).await;
        assert_eq!(summary.windows_spooled, 0);
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
    }

    /// The scenario, scaled down: a ten-minute outage at 10 s windows
    /// is 60 windows, more than the queue holds.
    #[tokio::test]
    async fn a_long_outage_loses_no_window() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = Arc::new(FakeBackend::default());
        backend.down.store(true, Ordering::SeqCst);
        let options = DeliveryOptions {
            queue_capacity: 16,
            retry_budget_per_window: Duration::from_millis(5),
            ..quick()
        };
        let (handle, metrics) = start(&backend, dir.path(), options);
        for sequence in 1..=60 {
            handle.submit(batch(sequence, 2));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        backend.down.store(false, Ordering::SeqCst);
        wait_for("every profile", || backend.delivered().len() == 120).await;
        assert_in_order_once(&backend.delivered(), &expected(1..=60, 2));
        assert_eq!(metrics.spool_evictions.get(), 0);
        assert_eq!(metrics.profiles_failed.get(), 0);
        let summary = handle.shutdown(Duration::from_secs(1)).await;
        assert_eq!(summary.windows_spooled, 0);
    }

    #[test]
    fn options_follow_the_window() {
        let options = DeliveryOptions::for_window(Duration::from_secs(15));
        assert_eq!(options.retry_budget_per_window, Duration::from_secs(15));
        assert_eq!(options.queue_capacity, 16);
    }
}
