//! The publisher: a thread of its own (with its own small runtime, so a slow or
//! absent broker never stalls the event loop) that sends the spool's records with
//! acknowledged JetStream publishes, a window at a time: each lane in order, and
//! every priority record before the next bulk one. A lane's position advances only
//! on the broker's ack; on any failure both go back to their last ack and send again
//! (the stream's `Nats-Msg-Id` dedupe drops what the broker had already stored).

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use async_nats::jetstream::{
    self,
    context::{PublishAckFuture, PublishErrorKind},
    message::PublishMessage,
    stream,
};

use super::{
    Subjects,
    config::{Discard, NatsArgs, StreamSettings},
    spool::{Class, Pos, Reader, Shared},
};

/// Publishes in flight before waiting for their acks (`cargo xtask bench-nats`: 256
/// → 1024 gave 115k → 126k events/s; 4096 no more).
pub const WINDOW: usize = 1024;
/// How long a publish may wait for its ack.
const ACK_TIMEOUT: Duration = Duration::from_secs(3);
/// Messages the stream deduplicates by `Nats-Msg-Id` for (the server's default).
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// What the publisher reports (metrics, status, tests).
#[derive(Debug, Default)]
pub struct Status {
    pub connected: AtomicBool,
    pub published: AtomicU64,
    /// Acks that said the stream already had the message (a resend after a failure).
    pub duplicates: AtomicU64,
    pub failures: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// The stream found differs from the configured settings (taken by the sink,
    /// which raises it as a record).
    pub stream_mismatch: Mutex<Option<String>>,
}

pub struct Publisher {
    pub status: Arc<Status>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    done: mpsc::Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl Publisher {
    pub fn start(args: NatsArgs, subjects: Subjects, shared: Arc<Shared>) -> std::io::Result<Self> {
        let status = Arc::new(Status::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, done) = mpsc::channel();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (st, sh, sp) = (status.clone(), shared.clone(), stop.clone());
        let thread = std::thread::Builder::new().name("nats-publish".into()).spawn(move || {
            rt.block_on(run(args, subjects, sh, st, sp));
            let _ = tx.send(());
        })?;
        Ok(Self { status, shared, stop, done, thread: Some(thread) })
    }

    /// Sends what is spooled until caught up or `limit` passes; what is left stays
    /// in the spool for the next start.
    pub fn close(&mut self, limit: Duration) -> bool {
        self.stop.store(true, Relaxed);
        self.shared.wake.notify_one();
        let caught_up = self.done.recv_timeout(limit).is_ok();
        if caught_up && let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        caught_up && self.shared.caught_up()
    }
}

/// Why a connection attempt failed, and whether a server answered at all (then
/// the broker is there, busy or electing a leader: worth waiting for at close).
struct ConnectError {
    why: String,
    reached: bool,
}

/// Connects to any server of the list (the client then follows the cluster's
/// members as the servers advertise them, and reconnects on its own).
async fn connect(
    args: &NatsArgs,
    subjects: &Subjects,
) -> Result<(jetstream::Context, Vec<String>), ConnectError> {
    let url = args.nats.as_deref().unwrap_or_default();
    let early = |why: String| ConnectError { why, reached: false };
    let servers = args.servers().map_err(|e| early(e.to_string()))?;
    let settings = args.stream().map_err(|e| early(e.to_string()))?;
    let opts =
        args.options(&format!("agentmon {}", subjects.host())).await.map_err(|e| early(e.to_string()))?;
    let client = opts
        .connect(servers)
        .await
        .map_err(|e| early(format!("connect {}: {e}", super::config::redact(url))))?;
    let js = jetstream::ContextBuilder::new().timeout(ACK_TIMEOUT).build(client);
    let mismatches =
        ensure_stream(&js, subjects, &settings).await.map_err(|why| ConnectError { why, reached: true })?;
    Ok((js, mismatches))
}

/// Creates the host's stream with `settings` when absent (nats-server 2.9 and
/// newer); an existing one is used as it is, and where it differs is returned.
pub async fn ensure_stream(
    js: &jetstream::Context,
    subjects: &Subjects,
    settings: &StreamSettings,
) -> Result<Vec<String>, String> {
    let cfg = stream::Config {
        name: subjects.stream(),
        subjects: subjects.stream_subjects(),
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        num_replicas: settings.replicas,
        max_age: settings.max_age,
        max_bytes: settings.max_bytes,
        discard: match settings.discard {
            Discard::Old => stream::DiscardPolicy::Old,
            Discard::New => stream::DiscardPolicy::New,
        },
        ..Default::default()
    };
    let err = |e: String| format!("stream {}: {e}", subjects.stream());
    let mut s = js.get_or_create_stream(cfg).await.map_err(|e| err(e.to_string()))?;
    let info = s.info().await.map_err(|e| err(e.to_string()))?;
    Ok(settings.mismatches(&info.config))
}

fn note(status: &Status, err: String) {
    let mut last = status.last_error.lock().unwrap_or_else(|e| e.into_inner());
    // Logged once per distinct error, not once per retry.
    if last.as_deref() != Some(err.as_str()) {
        tracing::warn!("NATS: {err}; events are kept in the spool");
        *last = Some(err);
    }
    status.connected.store(false, Relaxed);
    status.failures.fetch_add(1, Relaxed);
}

async fn run(
    args: NatsArgs,
    subjects: Subjects,
    shared: Arc<Shared>,
    status: Arc<Status>,
    stop: Arc<AtomicBool>,
) {
    let mut readers = Class::ALL.map(|c| Reader::new(shared.clone(), c));
    let mut js: Option<jetstream::Context> = None;
    let mut backoff = Duration::from_millis(100);
    let mut given_up_at: Option<Instant> = None;
    // A server answered at least once in this run: a failure now is a failover in
    // progress (a node or a stream leader gone while the cluster elects another) or
    // a busy cluster, not a broker that is not there.
    let mut reached = false;
    loop {
        let stopping = stop.load(Relaxed);
        // At stop, a broker never reached is given one more second; one that was is
        // given until the close's limit, to finish its failover.
        if stopping && !reached && given_up_at.is_some_and(|t| t.elapsed() > Duration::from_secs(1)) {
            return;
        }
        let ctx = match &js {
            Some(c) if c.client().connection_state() == async_nats::connection::State::Connected => c.clone(),
            Some(_) => {
                wait(&shared, &stop, backoff).await;
                given_up_at.get_or_insert_with(Instant::now);
                js = None;
                continue;
            }
            None => match connect(&args, &subjects).await {
                Ok((c, mismatches)) => {
                    if !mismatches.is_empty() {
                        // Used as it is (the SOC may own it), and said each time we connect.
                        let said = format!(
                            "stream {} differs from the configured one: {}",
                            subjects.stream(),
                            mismatches.join("; ")
                        );
                        tracing::error!("NATS: {said}");
                        *status.stream_mismatch.lock().unwrap_or_else(|e| e.into_inner()) = Some(said);
                    }
                    js = Some(c.clone());
                    status.connected.store(true, Relaxed);
                    reached = true;
                    c
                }
                Err(e) => {
                    reached |= e.reached;
                    note(&status, e.why);
                    given_up_at.get_or_insert_with(Instant::now);
                    wait(&shared, &stop, backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            },
        };
        let failed = match pump(&ctx, &mut readers, &shared, &status).await {
            Ok(0) if stopping => return,
            Ok(0) => {
                wait(&shared, &stop, Duration::from_millis(500)).await;
                continue;
            }
            Ok(_) => None,
            Err(e) => Some(e),
        };
        match failed {
            None => {
                status.connected.store(true, Relaxed);
                backoff = Duration::from_millis(100);
                given_up_at = None;
            }
            Some(e) => {
                note(&status, e);
                readers.iter_mut().for_each(Reader::rewind);
                given_up_at.get_or_insert_with(Instant::now);
                // A missing stream (deleted, or a fresh server) is created again.
                js = None;
                wait(&shared, &stop, backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Sends what the spool holds, keeping up to [`WINDOW`] publishes unacknowledged,
/// until caught up; the count sent. Each refill takes the first lane (priority)
/// before the next. The acknowledged positions are saved as acks come (at most
/// every 50 ms, and at the end).
async fn pump(
    ctx: &jetstream::Context,
    readers: &mut [Reader; 2],
    shared: &Shared,
    status: &Status,
) -> Result<u64, String> {
    let mut inflight: VecDeque<(PublishAckFuture, usize, Pos)> = VecDeque::new();
    let mut acked: [Option<Pos>; 2] = [None; 2];
    let mut saved = Instant::now();
    let mut sent = 0;
    let classes = readers.each_ref().map(Reader::class);
    let save = |acked: &mut [Option<Pos>; 2]| {
        for (lane, pos) in acked.iter_mut().enumerate() {
            if let Some(p) = pos.take()
                && let Err(e) = shared.ack(classes[lane], p)
            {
                tracing::error!("NATS spool: {e}");
            }
        }
    };
    let result = loop {
        let mut refill = Ok(());
        while inflight.len() < WINDOW {
            let next = readers.iter_mut().enumerate().find_map(|(lane, r)| {
                r.next_record().map(|rec| rec.map(|(rec, pos)| (rec, lane, pos))).transpose()
            });
            match next {
                Some(Ok((rec, lane, pos))) => {
                    let msg = PublishMessage::build().payload(rec.payload.into()).message_id(rec.id);
                    match ctx.send_publish(rec.subject, msg).await {
                        Ok(f) => inflight.push_back((f, lane, pos)),
                        // Never accepted however often it is sent: drop it, count it (the
                        // sink reports the count as loss), and go on with the rest.
                        Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                            tracing::error!(
                                "NATS: a message larger than the server accepts was dropped: {e}"
                            );
                            if readers[lane].first_time(pos) {
                                shared.dropped.fetch_add(1, Relaxed);
                            }
                            if !inflight.iter().any(|(_, l, _)| *l == lane) {
                                acked[lane] = Some(pos);
                            }
                        }
                        Err(e) => {
                            refill = Err(format!("publish: {e}"));
                            break;
                        }
                    }
                }
                None => break,
                // A spool that cannot be read cannot be sent: say so, retry later.
                Some(Err(e)) => {
                    refill = Err(e.to_string());
                    break;
                }
            }
        }
        let Some((f, lane, pos)) = inflight.pop_front() else { break refill.map(|()| sent) };
        match f.await {
            Ok(ack) => {
                acked[lane] = Some(pos);
                sent += 1;
                status.published.fetch_add(1, Relaxed);
                if ack.duplicate {
                    status.duplicates.fetch_add(1, Relaxed);
                }
            }
            Err(e) => break Err(format!("publish ack: {e}")),
        }
        if let Err(e) = refill {
            break Err(e);
        }
        if saved.elapsed() > Duration::from_millis(50) {
            save(&mut acked);
            saved = Instant::now();
        }
    };
    save(&mut acked);
    result
}

/// Sleeps until more is spooled, stop is asked, or `d` passes.
async fn wait(shared: &Shared, stop: &AtomicBool, d: Duration) {
    if stop.load(Relaxed) {
        tokio::time::sleep(d.min(Duration::from_millis(100))).await;
        return;
    }
    let _ = tokio::time::timeout(d, shared.wake.notified()).await;
}
