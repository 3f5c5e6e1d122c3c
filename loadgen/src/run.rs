//! One load run against a [`Driver`]: pre-generate, send on schedule from every sender,
//! drain, scrape the nodes, and gather everything the report needs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lethe_crypto::framing::PacketSize;

use crate::driver::{Driver, NodeInfo};
use crate::generator::{
    generate, Generated, GeneratorJob, GeneratorLive, GeneratorStats, PacketPlan,
};
use crate::limits;
use crate::limits::QUEUED_BYTES_MAX;
use crate::receiver::{ActiveRun, ReceiverStats};
use crate::refresh::FeedStats;
use crate::schedule::{Clock, RealClock, Schedule};
use crate::scrape::{delta, scrape, NodeDelta, Samples};
use crate::sender::{pace, ChannelSource, LiveCounters, OutPacket, PaceConfig, SenderStats};
use crate::trace::{PacketTrace, TraceWritten};
use crate::tracker::{Tracker, TrackerResult};
use crate::windows::{self, ProcessReport, WatchedProcess};

const TICK: Duration = Duration::from_millis(limits::PROGRESS_TICK_MS);

static INTERRUPT: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// SIGINT/SIGTERM stop the run (and a ramp) and the report covers what was sent; a second
/// signal exits at once.
pub fn install_interrupt() -> Result<(), String> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&flag))
            .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&flag)))
            .map_err(|e| format!("signal handler: {e}"))?;
    }
    let _ = INTERRUPT.set(flag);
    Ok(())
}

/// True once SIGINT or SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPT
        .get()
        .is_some_and(|flag| flag.load(Ordering::Relaxed))
}

/// What to send.
#[derive(Clone, Debug)]
pub struct LoadParams {
    pub rate_per_s: f64,
    pub duration_s: f64,
    pub clients: u32,
    pub size: PacketSize,
    /// Mean exponential delay per mix hop, ms.
    pub delay_ms_mean: f64,
    pub late_bound_ms: f64,
    pub drain_margin_s: f64,
    /// Seconds of packets built ahead of the schedule.
    pub lookahead_s: f64,
    /// Length of the report's windows of scheduled time, s.
    pub window_s: f64,
    pub run_id: u32,
    pub progress: bool,
    /// One live line per second on stderr (`crate::live`; only when it is a terminal).
    pub live: bool,
    /// Label of the progress bar (e.g. the ramp step).
    pub label: String,
    /// `--start-at`: the clock starts then (after the set-up and the queues' prefill), so that
    /// generators on several machines share time 0.
    pub start_at: Option<SystemTime>,
    /// `--trace DIR` (a single run): loadgen's own rows, written to its part after the run.
    pub trace: Option<Arc<PacketTrace>>,
}

/// Everything one run produced.
pub struct RunOutcome {
    pub params: LoadParams,
    /// Wall-clock time of the schedule's time 0.
    pub started_at: SystemTime,
    pub schedule: Schedule,
    pub hops: usize,
    pub frame_bytes: usize,
    pub expected_delay_ms: f64,
    pub drain_s: f64,
    pub sender: SenderStats,
    pub generator: GeneratorStats,
    /// Packets built before the clock started.
    pub prebuilt: u64,
    /// Stopped early by SIGINT/SIGTERM.
    pub interrupted: bool,
    pub tracker: TrackerResult,
    pub receiver: ReceiverStats,
    /// Gateway-client counters over the run (gateway drivers).
    pub clients: Option<crate::client_stats::ClientStats>,
    pub nodes: Vec<(NodeInfo, Result<NodeDelta, String>)>,
    /// From the start to the last frame handed to the kernel.
    pub send_window_s: f64,
    /// From the start to the end of the drain.
    pub wall_s: f64,
    /// Why the run stopped early because part of the network died (a node process exited,
    /// a receiver session ended); `None` if it did not.
    pub network_failure: Option<String>,
    /// The processes watched (local nodes, then loadgen) and their memory at the end of every
    /// window that ended (`rss_windows[window][process]`).
    pub watched: Vec<WatchedProcess>,
    pub rss_windows: Vec<windows::Sample>,
    /// Memory of every watched process over the run.
    pub processes: Vec<ProcessReport>,
    /// Which routes the packets took, and what became of them.
    pub generations: Vec<GenerationOutcome>,
    /// The topology refresh during the run (gateway drivers); change times are relative to
    /// the start.
    pub topology: Option<FeedStats>,
    /// loadgen's trace part (`--trace`), once written.
    pub trace: Option<TraceWritten>,
    pub topology_refresh_s: Option<f64>,
}

/// Packets built over one generation of routes.
#[derive(Clone, Copy, Debug)]
pub struct GenerationOutcome {
    pub generation: u64,
    pub epoch: Option<u64>,
    pub first_seq: u64,
    pub packets: u64,
    pub delivered: u64,
}

impl RunOutcome {
    pub fn not_sent(&self) -> u64 {
        self.schedule
            .total
            .saturating_sub(self.sender.sent + self.sender.failed)
    }

    pub fn lost(&self) -> u64 {
        self.sender.sent.saturating_sub(self.tracker.delivered)
    }
}

/// Runs `params` against `driver`.
pub fn run_load(driver: &mut dyn Driver, params: &LoadParams) -> Result<RunOutcome, String> {
    let schedule =
        Schedule::new(params.rate_per_s, params.duration_s, params.clients).ok_or_else(|| {
            format!(
                "a run needs a positive rate and duration giving at least one packet \
                 (rate {} /s, duration {} s, clients {})",
                params.rate_per_s, params.duration_s, params.clients
            )
        })?;
    let plan = plan(driver, params)?;
    let trace_clients = match &params.trace {
        Some(_) => Some(driver.trace_clients(params.clients).ok_or(
            "--trace: loadgen records its own packets on the local testnet only (its nodes \
             are traced by `lethe testnet up --trace`)",
        )?),
        None => None,
    };
    let window_ns = (params.window_s * 1e9) as u64;
    let run_ns = (params.duration_s * 1e9) as u64;
    let window_count = windows::count(window_ns, run_ns);
    let tracker = Arc::new(Tracker::new(params.run_id, schedule.total, window_ns)?);
    let feed = driver.topology_feed();
    let feed_before = feed.as_ref().map(|f| f.stats());
    let mut watched = driver.processes();
    watched.push(WatchedProcess {
        name: "loadgen".into(),
        pid: std::process::id(),
        log: None,
        metrics: None,
    });
    if let Some(at) = params.start_at {
        wait_until(
            at.checked_sub(Duration::from_millis(limits::START_PREPARE_MS))
                .unwrap_or(at),
        );
    }
    let before = scrape_all(driver.nodes());
    let receiver_before = driver.receiver_stats();
    let clients_before = driver.client_stats();
    let mut injectors = Vec::new();
    for client in 0..params.clients {
        injectors.push(driver.connect(client)?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let generator_live = Arc::new(GeneratorLive::default());
    let per_client = queue_capacity(&plan, &schedule, params.lookahead_s);
    let (queues, sources): (Vec<SyncSender<OutPacket>>, Vec<ChannelSource>) = (0..params.clients)
        .map(|_| {
            let (tx, rx) = sync_channel(per_client);
            let source = ChannelSource {
                receiver: rx,
                peeked: None,
            };
            (tx, source)
        })
        .unzip();
    let job = GeneratorJob {
        plan: plan.clone(),
        schedule,
        run_id: params.run_id,
        queues,
        stop: Arc::clone(&stop),
        live: Arc::clone(&generator_live),
        feed: feed.clone(),
        trace: params.trace.clone(),
    };
    let generator = std::thread::Builder::new()
        .name("generator".into())
        .spawn(move || generate(job))
        .map_err(|e| format!("generator thread: {e}"))?;
    let prefill = (per_client as u64)
        .saturating_mul(u64::from(params.clients))
        .min(schedule.total);
    let prefill_started = Instant::now();
    while generator_live.created.load(Ordering::Relaxed) < prefill
        && !generator.is_finished()
        && !interrupted()
        && prefill_started.elapsed() < Duration::from_millis(limits::PREFILL_TIMEOUT_MS)
    {
        std::thread::sleep(Duration::from_millis(limits::PREFILL_POLL_MS));
    }

    let prebuilt = generator_live.created.load(Ordering::Relaxed);
    if let Some(at) = params.start_at {
        wait_until(at);
    }
    let rss_start = windows::sample(&watched);
    // Read first: trace rows may then be stamped a moment early, never after what they caused.
    if let Some(trace) = &params.trace {
        trace.started();
    }
    let start = Instant::now();
    let started_at = SystemTime::now();
    driver.set_run(Some(ActiveRun {
        tracker: Arc::clone(&tracker),
        start,
        trace: params.trace.clone(),
    }));
    let clock = RealClock { start };
    let live = Arc::new(LiveCounters::default());
    let give_up_ns = schedule
        .end_ns()
        .saturating_add(limits::GIVE_UP_AFTER_END_MS * 1_000_000);
    let config = PaceConfig {
        late_bound_ns: (params.late_bound_ms * 1e6) as u64,
        give_up_ns,
        window_ns,
    };
    let senders = spawn_senders(
        injectors,
        sources,
        clock,
        config,
        (&stop, &live),
        params.trace.as_ref(),
    )?;
    let progress = progress_bar(params, &schedule);
    let mut live_view = LiveView::new(params, &schedule, plan.expected_delay_ns() / 1e9);
    // The windows before the last are sampled as the clock passes their end; the last one
    // ends with the run (sampled after the drain).
    let mut rss_windows: Vec<windows::Sample> = Vec::with_capacity(window_count);
    let sample_windows = |rss_windows: &mut Vec<windows::Sample>| {
        let now_ns = clock.now_ns();
        while rss_windows.len() + 1 < window_count
            && now_ns >= windows::bounds_ns(rss_windows.len(), window_ns, run_ns).1
        {
            rss_windows.push(windows::sample(&watched));
        }
    };
    let mut network_failure = None;
    let mut thread_failure = None;
    while senders.iter().any(|s| !s.is_finished()) {
        std::thread::sleep(TICK);
        update_progress(&progress, &clock, &live, &tracker);
        live_view.tick(&progress, &clock, &live, &tracker);
        sample_windows(&mut rss_windows);
        if interrupted() {
            stop.store(true, Ordering::Relaxed);
        }
        note_failure(driver, &stop, &mut network_failure);
    }
    stop.store(true, Ordering::Relaxed);
    let mut sender = SenderStats::new()?;
    for handle in senders {
        match handle.join() {
            Ok(stats) => sender.merge(&stats),
            Err(_) => thread_failure = Some("a sender thread panicked".to_string()),
        }
    }
    let generated = match generator.join() {
        Ok(Ok(generated)) => generated,
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err("the generator thread panicked".into()),
    };
    if let Some(e) = thread_failure {
        progress.finish_and_clear();
        driver.set_run(None);
        return Err(e);
    }
    let send_window_s = sender.last_send_ns as f64 / 1e9;
    let expected_delay_ms = plan.expected_delay_ns() / 1e6;
    let drain_s = 3.0 * expected_delay_ms / 1e3 + params.drain_margin_s;
    // A run stopped by a node failure drains from its last send, not from the schedule's
    // end: nothing more was sent.
    let sent_until_s = if network_failure.is_some() {
        send_window_s
    } else {
        params.duration_s.max(send_window_s)
    };
    let drain_until = start + Duration::from_secs_f64(sent_until_s + drain_s);
    progress.set_message("draining");
    let mut checked = Instant::now();
    while tracker.delivered() < sender.sent && Instant::now() < drain_until && !interrupted() {
        std::thread::sleep(Duration::from_millis(limits::DRAIN_POLL_MS));
        update_progress(&progress, &clock, &live, &tracker);
        live_view.tick(&progress, &clock, &live, &tracker);
        if checked.elapsed() >= TICK {
            checked = Instant::now();
            sample_windows(&mut rss_windows);
            note_failure(driver, &stop, &mut network_failure);
        }
    }
    progress.finish_and_clear();
    driver.set_run(None);
    let wall_s = start.elapsed().as_secs_f64();
    // A node that died in the last moments of the run fails it too.
    note_failure(driver, &stop, &mut network_failure);
    let stopped_early = interrupted() || network_failure.is_some();
    let rss_end = windows::sample(&watched);
    if !stopped_early {
        while rss_windows.len() < window_count {
            rss_windows.push(rss_end.clone());
        }
    }
    let processes = windows::process_reports(&watched, &rss_start, &rss_windows, &rss_end);
    let tracker = tracker.result()?;
    let generations = generation_outcomes(&generated, &tracker);
    let topology = feed
        .as_ref()
        .zip(feed_before.as_ref())
        .map(|(feed, before)| {
            let mut stats = feed.stats().since(before);
            for change in &mut stats.changes {
                change.at_s = change.at.map_or(0.0, |at| seconds_between(start, at));
            }
            stats
        });
    // Written while the network is up (the nodes write theirs as they stop).
    let trace = match (&params.trace, &trace_clients) {
        (Some(trace), Some(clients)) => Some(trace.write(
            clients,
            plan.topology.layers.len() as u32,
            plan.delay_ns_mean,
        )?),
        _ => None,
    };
    let after = scrape_all(driver.nodes());
    let nodes = driver
        .nodes()
        .iter()
        .zip(before.into_iter().zip(after))
        .map(|(node, (b, a))| {
            let d = match (b, a) {
                (Ok(b), Ok(a)) => Ok(delta(&b, &a)),
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
            (node.clone(), d)
        })
        .collect();
    Ok(RunOutcome {
        params: params.clone(),
        started_at,
        schedule,
        hops: plan.topology.hops(),
        frame_bytes: plan.frame_len(),
        expected_delay_ms,
        drain_s,
        generator: generated.stats,
        prebuilt,
        interrupted: interrupted(),
        tracker,
        receiver: driver.receiver_stats().since(&receiver_before),
        clients: driver
            .client_stats()
            .map(|after| after.since(&clients_before.unwrap_or_default())),
        nodes,
        sender,
        send_window_s,
        wall_s,
        network_failure,
        watched,
        rss_windows,
        processes,
        generations,
        topology,
        topology_refresh_s: driver.topology_refresh_s(),
        trace,
    })
}

/// Sleeps until the wall clock reads `at` (at once if it already passed: the report says how
/// late the start was). Short sleeps, so that Ctrl-C is heard and a clock stepped by NTP
/// meanwhile is followed.
fn wait_until(at: SystemTime) {
    while !interrupted() {
        let Ok(left) = at.duration_since(SystemTime::now()) else {
            return;
        };
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(TICK));
    }
}

/// Records the first failure of the network (`driver.check`) and stops the senders.
fn note_failure(driver: &mut dyn Driver, stop: &AtomicBool, failure: &mut Option<String>) {
    if failure.is_some() {
        return;
    }
    if let Err(e) = driver.check() {
        // Said at once (even with --quiet): the run stops here, the report follows.
        eprintln!("loadgen: the network failed; stopping the run: {e}");
        stop.store(true, Ordering::Relaxed);
        *failure = Some(e);
    }
}

/// `later - earlier` in seconds, negative when `later` is before `earlier`.
fn seconds_between(earlier: Instant, later: Instant) -> f64 {
    match later.checked_duration_since(earlier) {
        Some(d) => d.as_secs_f64(),
        None => -earlier.duration_since(later).as_secs_f64(),
    }
}

fn generation_outcomes(generated: &Generated, tracker: &TrackerResult) -> Vec<GenerationOutcome> {
    generated
        .generations
        .iter()
        .map(|g| GenerationOutcome {
            generation: g.generation,
            epoch: g.epoch,
            first_seq: g.first_seq,
            packets: g.end_seq.saturating_sub(g.first_seq),
            delivered: tracker.delivered_in(g.first_seq, g.end_seq),
        })
        .collect()
}

/// The packet plan of `params` on `driver`'s topology.
pub fn plan(driver: &dyn Driver, params: &LoadParams) -> Result<PacketPlan, String> {
    let plan = PacketPlan {
        topology: driver.topology(),
        clients: params.clients,
        size: params.size,
        wire: driver.wire(params.size),
        delay_ns_mean: params.delay_ms_mean.max(0.0) * 1e6,
        trace: params.trace.is_some(),
    };
    plan.validate()?;
    Ok(plan)
}

/// True when a run of `rate_per_s` for `duration_s` fits in the queues whole, so that every
/// packet is built before the clock starts (with a lookahead of at least the duration).
pub fn fits_prebuilt(rate_per_s: f64, duration_s: f64, frame_bytes: usize) -> bool {
    rate_per_s * duration_s * frame_bytes as f64 <= QUEUED_BYTES_MAX as f64
}

fn queue_capacity(plan: &PacketPlan, schedule: &Schedule, lookahead_s: f64) -> usize {
    let clients = schedule.clients.max(1) as usize;
    let wanted = (schedule.rate_per_s * lookahead_s / clients as f64).ceil() as usize;
    let memory_cap = QUEUED_BYTES_MAX / plan.frame_len().max(1) / clients;
    wanted.clamp(
        limits::QUEUE_FRAMES_MIN,
        memory_cap.max(limits::QUEUE_FRAMES_MIN),
    )
}

fn scrape_all(nodes: &[NodeInfo]) -> Vec<Result<Samples, String>> {
    nodes
        .iter()
        .map(|node| match node.metrics {
            Some(address) => scrape(address),
            None => Err("no metrics endpoint given".into()),
        })
        .collect()
}

fn spawn_senders(
    injectors: Vec<Box<dyn crate::driver::Injector>>,
    sources: Vec<ChannelSource>,
    clock: RealClock,
    config: PaceConfig,
    (stop, live): (&Arc<AtomicBool>, &Arc<LiveCounters>),
    trace: Option<&Arc<PacketTrace>>,
) -> Result<Vec<JoinHandle<SenderStats>>, String> {
    let mut handles = Vec::new();
    for (index, (mut injector, mut source)) in injectors.into_iter().zip(sources).enumerate() {
        let stop = Arc::clone(stop);
        let live = Arc::clone(live);
        let trace = trace.cloned();
        let mut stats = SenderStats::new()?;
        let handle = std::thread::Builder::new()
            .name(format!("sender-{index}"))
            .spawn(move || {
                pace(
                    &clock,
                    &mut source,
                    |bytes| injector.send(bytes),
                    config,
                    &stop,
                    &live,
                    &mut stats,
                    trace.as_deref(),
                );
                stats
            })
            .map_err(|e| format!("sender thread: {e}"))?;
        handles.push(handle);
    }
    Ok(handles)
}

fn progress_bar(params: &LoadParams, schedule: &Schedule) -> ProgressBar {
    if !params.progress {
        return ProgressBar::hidden();
    }
    // Drawn only when stderr is a terminal.
    let bar = ProgressBar::with_draw_target(
        Some((schedule.end_ns() / 1_000_000).max(1)),
        ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = ProgressStyle::with_template("{prefix} [{bar:30}] {elapsed_precise} {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(params.label.clone());
    bar
}

fn update_progress(bar: &ProgressBar, clock: &RealClock, live: &LiveCounters, tracker: &Tracker) {
    if bar.is_hidden() {
        return;
    }
    bar.set_position(clock.now_ns() / 1_000_000);
    bar.set_message(format!(
        "sent {} delivered {} late {}",
        live.sent.load(Ordering::Relaxed),
        tracker.delivered(),
        live.late.load(Ordering::Relaxed)
    ));
}

/// The live view's state over one run: a line each whole second of the clock.
struct LiveView {
    enabled: bool,
    schedule: Schedule,
    offered_rate_per_s: f64,
    /// Packets due longer ago than this are counted undelivered if they have not arrived
    /// (the run's drain: 3 x the expected mix delay + --drain-margin-s, at least 1 s).
    horizon_s: f64,
    next_s: u64,
    /// Sent, and the clock, at the previous line.
    sent_before: u64,
    line_before_s: f64,
}

impl LiveView {
    fn new(params: &LoadParams, schedule: &Schedule, expected_delay_s: f64) -> LiveView {
        LiveView {
            enabled: params.live && params.progress,
            schedule: *schedule,
            offered_rate_per_s: params.rate_per_s,
            horizon_s: (3.0 * expected_delay_s + params.drain_margin_s).max(1.0),
            next_s: 1,
            sent_before: 0,
            line_before_s: 0.0,
        }
    }

    fn tick(
        &mut self,
        bar: &ProgressBar,
        clock: &RealClock,
        live: &LiveCounters,
        tracker: &Tracker,
    ) {
        let now_ns = clock.now_ns();
        if !self.enabled || now_ns < self.next_s * 1_000_000_000 {
            return;
        }
        let elapsed_s = now_ns as f64 / 1e9;
        let sent = live.sent.load(Ordering::Relaxed);
        let cutoff_s = (elapsed_s - self.horizon_s).floor().max(0.0) as u64;
        let due = self
            .schedule
            .due_between(0, cutoff_s.saturating_mul(1_000_000_000));
        let sample = crate::live::Sample {
            elapsed_s,
            offered_rate_per_s: self.offered_rate_per_s,
            sent_rate_per_s: sent.saturating_sub(self.sent_before) as f64
                / (elapsed_s - self.line_before_s).max(1e-3),
            sent,
            delivered: tracker.delivered(),
            due,
            undelivered: due.saturating_sub(tracker.delivered_scheduled_before(cutoff_s)),
            horizon_s: self.horizon_s,
            last_second: tracker.second_figures(self.next_s - 1),
        };
        bar.println(crate::live::line(&sample));
        self.sent_before = sent;
        self.line_before_s = elapsed_s;
        self.next_s = now_ns / 1_000_000_000 + 1;
    }
}
