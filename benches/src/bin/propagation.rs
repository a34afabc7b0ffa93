//! Config propagation: how long a change accepted by Lightbulb's config API takes to be
//! served by every router following it (`router --control-plane`).
//!
//! Starts, as child processes on 127.0.0.1 with ports the kernel picks, one `demo-model`,
//! one `lightbulb --store DIR --insecure-no-auth` seeded with a cluster pointing at the demo
//! model and one route, and `--routers N` routers following Lightbulb's Watch stream. Then:
//!
//! 1. `--changes` times: `PUT /v1/routes/key-{i}`, and from the moment the PUT returned 200,
//!    polls every router (`GET /` with `x-routing-key: key-{i}` through its proxy, a tight
//!    loop on a kept-alive connection, bounded by a deadline) until each answers 200;
//! 2. one large push: `PUT /v1/config` (`If-Match` from `GET /v1/config`) of a rule set
//!    with `--large-routes` routes, then polls for its last key the same way.
//!
//! Prints p50/p90/p99/max of PUT-accepted → served for the first and the last router, the
//! large push's figures, and writes a JSON report to `bench-results/`. See
//! benches/README.md, "Config propagation".
//!
//! `cargo run --release -p benches --bin propagation -- --routers 10`

use std::fmt::Write as _;
use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

type Body = Full<Bytes>;

/// Measures how long a config change takes from Lightbulb's API to every router.
#[derive(Debug, Parser)]
#[command(name = "propagation")]
struct Args {
    /// Routers following Lightbulb (each `--workers 1`).
    #[arg(long, default_value_t = 1)]
    routers: usize,
    /// Single-route changes (`PUT /v1/routes/key-{i}`) to measure.
    #[arg(long, default_value_t = 100)]
    changes: usize,
    /// Routes in the large push (`PUT /v1/config`); 0 skips it.
    #[arg(long, default_value_t = 100_000)]
    large_routes: usize,
    /// How long one change may take to reach every router, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    change_deadline_ms: u64,
    /// How long the large push may take (its PUT, then reaching every router), in
    /// milliseconds.
    #[arg(long, default_value_t = 300_000)]
    large_deadline_ms: u64,
    /// How long each process may take to print its "listening" line, and the routers to
    /// serve the seed route, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    start_deadline_ms: u64,
    /// Pause between two polls of one router, in microseconds (0: a tight loop).
    #[arg(long, default_value_t = 0)]
    poll_interval_us: u64,
    /// Directory holding the `router`, `lightbulb` and `demo-model` binaries [default: the
    /// directory of this binary, i.e. target/release with `cargo run --release`].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Where the JSON report goes [default: bench-results/ at the workspace root].
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// Keep the work directory (store, snapshots, seed, every process's stdout/stderr).
    #[arg(long)]
    keep_work: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("propagation: cannot build the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // On Ctrl-C the measurement future is dropped, which kills every child (see `Proc`).
    let result = runtime.block_on(async {
        tokio::select! {
            r = run(args) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("propagation: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------
// Child processes

/// A child process, killed (SIGKILL) and reaped when dropped, whatever the exit path.
struct Proc {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    fn spawn(name: &str, bin: &Path, args: &[String], logs: &Path) -> Result<Proc> {
        let stdout = logs.join(format!("{name}.stdout"));
        let stderr = logs.join(format!("{name}.stderr"));
        let child = Command::new(bin)
            .args(args)
            // Plain log lines in the error messages' tails.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?)
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", bin.display()))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
        })
    }

    /// Waits for a complete stdout line starting with `prefix` and returns its
    /// `key=value` words.
    async fn listening(&mut self, prefix: &str, deadline: Instant) -> Result<Map<String, Value>> {
        loop {
            let out = fs::read_to_string(&self.stdout).unwrap_or_default();
            if let Some(line) = out
                .split_inclusive('\n')
                .find(|l| l.starts_with(prefix) && l.ends_with('\n'))
            {
                let mut words = Map::new();
                for w in line.split_whitespace() {
                    if let Some((k, v)) = w.split_once('=') {
                        words.insert(k.to_owned(), Value::String(v.to_owned()));
                    }
                }
                words.insert("line".into(), Value::String(line.trim().to_owned()));
                return Ok(words);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before printing \"{prefix} ...\"\n{}",
                    self.name,
                    self.tail()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} printed no \"{prefix} ...\" line in time\n{}",
                    self.name,
                    self.tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Err naming the process when it has exited.
    fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            Some(status) => bail!("{} exited ({status})\n{}", self.name, self.tail()),
            None => Ok(()),
        }
    }

    /// The last lines of its stderr and stdout, for error messages.
    fn tail(&self) -> String {
        let mut s = String::new();
        for (what, path) in [("stderr", &self.stderr), ("stdout", &self.stdout)] {
            let text = fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(20);
            let _ = writeln!(
                s,
                "--- {} {what} (last {} lines, {}) ---",
                self.name,
                lines.len() - from,
                path.display()
            );
            for l in &lines[from..] {
                let _ = writeln!(s, "{l}");
            }
        }
        s
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every child; `check` names the first that has died.
struct Fleet {
    demo: Proc,
    lightbulb: Proc,
    routers: Vec<Proc>,
}

impl Fleet {
    fn check(&mut self) -> Result<()> {
        self.demo.check_alive()?;
        self.lightbulb.check_alive()?;
        for r in &mut self.routers {
            r.check_alive()?;
        }
        Ok(())
    }

    /// `err` plus which process died, or the tail of `router-i`'s logs when it names one.
    fn explain(&mut self, err: anyhow::Error, router: Option<usize>) -> anyhow::Error {
        if let Err(dead) = self.check() {
            return err.context(format!("{dead:#}"));
        }
        match router.and_then(|i| self.routers.get(i)) {
            Some(r) => anyhow!("{err:#}\n{}\n{}", r.tail(), self.lightbulb.tail()),
            None => anyhow!("{err:#}\n{}", self.lightbulb.tail()),
        }
    }
}

fn addr_of(words: &Map<String, Value>, key: &str, who: &str) -> Result<SocketAddr> {
    words
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("{who}: no {key}= in its listening line"))?
        .parse()
        .with_context(|| format!("{who}: bad {key}= address"))
}

// ---------------------------------------------------------------------------------------
// HTTP

struct Resp {
    status: StatusCode,
    etag: Option<String>,
    body: Bytes,
}

impl Resp {
    fn text(&self) -> String {
        let s = String::from_utf8_lossy(&self.body);
        s.chars().take(2000).collect()
    }
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Body>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn send(sender: &mut SendRequest<Body>, req: Request<Body>, limit: Duration) -> Result<Resp> {
    let exchange = async {
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        let etag = parts
            .headers
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok::<_, anyhow::Error>(Resp {
            status: parts.status,
            etag,
            body,
        })
    };
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| anyhow!("no answer within {} ms", limit.as_millis()))?
}

/// One request to Lightbulb's HTTP port, on a fresh connection.
async fn lightbulb_call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
    if_match: Option<&str>,
    limit: Duration,
) -> Result<Resp> {
    let mut builder = Request::builder()
        .method(method.clone())
        .uri(path)
        .header(http::header::HOST, addr.to_string());
    if body.is_some() {
        builder = builder.header(http::header::CONTENT_TYPE, "application/json");
    }
    if let Some(tag) = if_match {
        builder = builder.header(http::header::IF_MATCH, tag);
    }
    let req = builder.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let mut sender = connect(addr).await?;
    send(&mut sender, req, limit)
        .await
        .with_context(|| format!("lightbulb {method} {path}"))
}

/// Polls one router's proxy on a kept-alive connection.
struct Poller {
    index: usize,
    addr: SocketAddr,
    sender: Option<SendRequest<Body>>,
    interval: Duration,
}

/// When a router first answered 200 for a key.
struct Served {
    at: Instant,
    polls: u64,
}

impl Poller {
    async fn get(&mut self, key: &str) -> Result<StatusCode> {
        if self.sender.as_ref().is_none_or(SendRequest::is_closed) {
            self.sender = Some(connect(self.addr).await?);
        }
        let Some(sender) = self.sender.as_mut() else {
            bail!("router-{}: no connection", self.index);
        };
        let req = Request::builder()
            .uri("/")
            .header(http::header::HOST, self.addr.to_string())
            .header("x-routing-key", key)
            .body(Body::default())?;
        match send(sender, req, Duration::from_secs(5)).await {
            Ok(resp) => Ok(resp.status),
            Err(e) => {
                self.sender = None;
                Err(e)
            }
        }
    }

    /// Polls until the router answers 200 for `key`, or fails at `deadline`.
    async fn until_served(mut self, key: String, deadline: Instant) -> (Self, Result<Served>) {
        let mut polls = 0u64;
        let mut last = String::from("no answer yet");
        let result = loop {
            if Instant::now() >= deadline {
                break Err(anyhow!(
                    "router-{} did not serve key {key} before the deadline ({polls} polls, last: {last})",
                    self.index
                ));
            }
            polls += 1;
            match self.get(&key).await {
                Ok(StatusCode::OK) => {
                    break Ok(Served {
                        at: Instant::now(),
                        polls,
                    });
                }
                Ok(status) => last = format!("status {status}"),
                Err(e) => {
                    last = format!("{e:#}");
                    // A refused connection fails at once: do not spin on it.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            if !self.interval.is_zero() {
                tokio::time::sleep(self.interval).await;
            }
        };
        (self, result)
    }
}

/// One measured change: when the PUT was sent and accepted, the version Lightbulb stored,
/// and when each router first served the changed key.
struct Propagation {
    sent: Instant,
    accepted: Instant,
    version: Option<u64>,
    served: Vec<Served>,
    /// Accepted → served, per router, in ms.
    per_router: Vec<f64>,
    /// The fastest and the slowest router, in ms after acceptance.
    first: f64,
    last: f64,
}

/// `PUT path` with `body` on Lightbulb (within `put_limit`), then polls every router until
/// each serves `key` (within `serve_limit` of sending). Errors name the failing process.
#[allow(clippy::too_many_arguments)]
async fn put_and_wait(
    fleet: &mut Fleet,
    pollers: &mut Vec<Poller>,
    http_addr: SocketAddr,
    path: &str,
    body: Vec<u8>,
    if_match: Option<&str>,
    key: &str,
    put_limit: Duration,
    serve_limit: Duration,
) -> Result<Propagation> {
    let sent = Instant::now();
    let resp = lightbulb_call(
        http_addr,
        Method::PUT,
        path,
        Some(body),
        if_match,
        put_limit,
    )
    .await
    .map_err(|e| fleet.explain(e, None))?;
    let accepted = Instant::now();
    if resp.status != StatusCode::OK {
        let e = anyhow!("PUT {path}: {} {}", resp.status, resp.text());
        return Err(fleet.explain(e, None));
    }
    let version = serde_json::from_slice::<Value>(&resp.body)
        .ok()
        .and_then(|v| v["version"].as_u64());
    let served = poll_all(pollers, key, sent + serve_limit)
        .await
        .map_err(|(r, e)| fleet.explain(e, Some(r)))?;
    let per_router: Vec<f64> = served
        .iter()
        .map(|s| ms(s.at.saturating_duration_since(accepted)))
        .collect();
    let first = per_router.iter().copied().fold(f64::INFINITY, f64::min);
    let last = per_router.iter().copied().fold(0.0, f64::max);
    Ok(Propagation {
        sent,
        accepted,
        version,
        served,
        per_router,
        first,
        last,
    })
}

/// Polls every router for `key` at once; on success the time each first served it (in
/// router order), the pollers given back either way.
async fn poll_all(
    pollers: &mut Vec<Poller>,
    key: &str,
    deadline: Instant,
) -> std::result::Result<Vec<Served>, (usize, anyhow::Error)> {
    let mut set = JoinSet::new();
    for p in pollers.drain(..) {
        set.spawn(p.until_served(key.to_owned(), deadline));
    }
    let mut done = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(pair) => done.push(pair),
            Err(e) => return Err((usize::MAX, anyhow!("a poll task failed: {e}"))),
        }
    }
    done.sort_by_key(|(p, _)| p.index);
    let mut served = Vec::new();
    let mut failure = None;
    for (p, r) in done {
        let index = p.index;
        pollers.push(p);
        match r {
            Ok(s) => served.push(s),
            Err(e) if failure.is_none() => failure = Some((index, e)),
            Err(_) => {}
        }
    }
    match failure {
        Some(f) => Err(f),
        None => Ok(served),
    }
}

// ---------------------------------------------------------------------------------------
// Figures

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn stats(values: &[f64]) -> Value {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    let r = |x: f64| (x * 1000.0).round() / 1000.0;
    json!({
        "n": v.len(),
        "min": r(v.first().copied().unwrap_or(f64::NAN)),
        "p50": r(percentile(&v, 50.0)),
        "p90": r(percentile(&v, 90.0)),
        "p99": r(percentile(&v, 99.0)),
        "max": r(v.last().copied().unwrap_or(f64::NAN)),
        "mean": r(mean),
    })
}

fn stats_line(name: &str, s: &Value) -> String {
    let f = |k: &str| s[k].as_f64().unwrap_or(f64::NAN);
    format!(
        "{name:<34} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
        f("p50"),
        f("p90"),
        f("p99"),
        f("max")
    )
}

/// `YYYY-MM-DD` and `YYYYMMDDTHHMMSSZ` of a Unix time (UTC).
fn utc(secs: u64) -> (String, String) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    (
        format!("{y:04}-{m:02}-{d:02}"),
        format!("{y:04}{m:02}{d:02}T{h:02}{mi:02}{s:02}Z"),
    )
}

// ---------------------------------------------------------------------------------------
// The measurement

const CLUSTER: &str = "demo";

fn route() -> Value {
    json!({ "cluster": CLUSTER })
}

async fn run(args: Args) -> Result<()> {
    if args.routers == 0 {
        bail!("--routers must be at least 1");
    }
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("this binary has no parent directory"))?
            .to_path_buf(),
    };
    let bin = |name: &str| -> Result<PathBuf> {
        let p = bin_dir.join(name);
        if !p.is_file() {
            bail!(
                "{} is missing: build it with `cargo build --release -p router -p lightbulb \
                 -p integration-tests --bin router --bin lightbulb --bin demo-model` \
                 (or pass --bin-dir)",
                p.display()
            );
        }
        Ok(p)
    };
    let (router_bin, lightbulb_bin, demo_bin) =
        (bin("router")?, bin("lightbulb")?, bin("demo-model")?);
    let out_dir = args.out_dir.clone().unwrap_or_else(|| {
        let benches = Path::new(env!("CARGO_MANIFEST_DIR"));
        benches.parent().unwrap_or(benches).join("bench-results")
    });
    let loadavg_start = fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned();

    // Declared before the processes: dropped (deleted) after they are killed.
    let work = tempfile::Builder::new().prefix("propagation-").tempdir()?;
    let logs = work.path().to_path_buf();
    let start_deadline = Instant::now() + Duration::from_millis(args.start_deadline_ms);

    // The demo model.
    let mut demo = Proc::spawn(
        "demo-model",
        &demo_bin,
        &[
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--name".into(),
            CLUSTER.into(),
        ],
        &logs,
    )?;
    let demo_words = demo.listening("demo-model", start_deadline).await?;
    let demo_addr: SocketAddr = demo_words["line"]
        .as_str()
        .and_then(|l| l.rsplit(' ').next())
        .ok_or_else(|| anyhow!("demo-model: no address in its listening line"))?
        .parse()
        .context("demo-model: bad address in its listening line")?;

    // Lightbulb on a fresh store, seeded with the demo cluster and one route.
    let seed = json!({
        "clusters": { CLUSTER: { "endpoints": [demo_addr.to_string()] } },
        "routes": { "seed": route() },
    });
    let seed_path = work.path().join("seed.json");
    fs::write(&seed_path, serde_json::to_vec_pretty(&seed)?)?;
    let store = work.path().join("store");
    let mut lightbulb = Proc::spawn(
        "lightbulb",
        &lightbulb_bin,
        &[
            "--store".into(),
            store.display().to_string(),
            "--config".into(),
            seed_path.display().to_string(),
            "--insecure-no-auth".into(),
            "--grpc".into(),
            "127.0.0.1:0".into(),
            "--http".into(),
            "127.0.0.1:0".into(),
        ],
        &logs,
    )?;
    let lb_words = lightbulb
        .listening("lightbulb listening", start_deadline)
        .await?;
    let grpc = addr_of(&lb_words, "grpc", "lightbulb")?;
    let http_addr = addr_of(&lb_words, "http", "lightbulb")?;

    // The routers.
    let mut routers = Vec::new();
    for i in 0..args.routers {
        let snap = work.path().join(format!("snapshot-{i}"));
        fs::create_dir_all(&snap)?;
        routers.push(Proc::spawn(
            &format!("router-{i}"),
            &router_bin,
            &[
                "--control-plane".into(),
                format!("http://{grpc}"),
                "--snapshot-dir".into(),
                snap.display().to_string(),
                "--node-id".into(),
                format!("router-{i}"),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--admin".into(),
                "127.0.0.1:0".into(),
                "--workers".into(),
                "1".into(),
            ],
            &logs,
        )?);
    }
    let mut fleet = Fleet {
        demo,
        lightbulb,
        routers,
    };
    let mut pollers = Vec::new();
    for i in 0..args.routers {
        let words = fleet.routers[i]
            .listening("router listening", start_deadline)
            .await?;
        pollers.push(Poller {
            index: i,
            addr: addr_of(&words, "proxy", &format!("router-{i}"))?,
            sender: None,
            interval: Duration::from_micros(args.poll_interval_us),
        });
    }
    // Every router serves the seed route before anything is measured.
    if let Err((i, e)) = poll_all(&mut pollers, "seed", start_deadline).await {
        return Err(fleet.explain(e.context("waiting for the seed route"), Some(i)));
    }
    println!(
        "propagation: demo-model {demo_addr}, lightbulb grpc={grpc} http={http_addr}, {} router(s) serving the seed route",
        args.routers
    );

    // 1. Single-route changes.
    let change_deadline = Duration::from_millis(args.change_deadline_ms);
    let mut per_change = Vec::new();
    let (mut put_ms, mut first_ms, mut last_ms) = (Vec::new(), Vec::new(), Vec::new());
    let mut sent_last_ms = Vec::new();
    let (mut first_poll_first, mut first_poll_all) = (0usize, 0usize);
    for i in 0..args.changes {
        let key = format!("key-{i}");
        let path = format!("/v1/routes/{key}");
        let body = serde_json::to_vec(&route())?;
        let Propagation {
            sent,
            accepted,
            version,
            served,
            per_router,
            first,
            last,
        } = put_and_wait(
            &mut fleet,
            &mut pollers,
            http_addr,
            &path,
            body,
            None,
            &key,
            change_deadline,
            change_deadline,
        )
        .await?;
        let at_first_poll = served.iter().filter(|s| s.polls == 1).count();
        if at_first_poll > 0 {
            first_poll_first += 1;
        }
        if at_first_poll == served.len() {
            first_poll_all += 1;
        }
        put_ms.push(ms(accepted - sent));
        first_ms.push(first);
        last_ms.push(last);
        let last_at = served.iter().map(|s| s.at).max().unwrap_or(accepted);
        sent_last_ms.push(ms(last_at.saturating_duration_since(sent)));
        per_change.push(json!({
            "key": key,
            "version": version,
            "put_ms": ms(accepted - sent),
            "first_router_ms": first,
            "last_router_ms": last,
            "per_router_ms": per_router,
            "polls": served.iter().map(|s| s.polls).collect::<Vec<_>>(),
        }));
    }
    fleet.check()?;

    // 2. The large push.
    let large = if args.large_routes > 0 {
        let limit = Duration::from_millis(args.large_deadline_ms);
        let current = lightbulb_call(http_addr, Method::GET, "/v1/config", None, None, limit)
            .await
            .map_err(|e| fleet.explain(e, None))?;
        let etag = match (current.status, current.etag) {
            (StatusCode::OK, Some(tag)) => tag,
            (status, tag) => {
                let e = anyhow!("GET /v1/config: {status}, ETag {tag:?}");
                return Err(fleet.explain(e, None));
            }
        };
        let mut routes = Map::new();
        routes.insert("seed".into(), route());
        for i in 0..args.changes {
            routes.insert(format!("key-{i}"), route());
        }
        for j in 0..args.large_routes {
            routes.insert(format!("large-{j}"), route());
        }
        let rules = json!({
            "clusters": { CLUSTER: { "endpoints": [demo_addr.to_string()] } },
            "routes": routes,
        });
        let body = serde_json::to_vec(&rules)?;
        let body_bytes = body.len();
        let last_key = format!("large-{}", args.large_routes - 1);
        let Propagation {
            sent,
            accepted,
            version,
            served,
            per_router,
            first,
            last,
        } = put_and_wait(
            &mut fleet,
            &mut pollers,
            http_addr,
            "/v1/config",
            body,
            Some(&etag),
            &last_key,
            limit,
            limit,
        )
        .await?;
        let last_at = served.iter().map(|s| s.at).max().unwrap_or(accepted);
        Some(json!({
            "routes": routes_len(&rules),
            "body_bytes": body_bytes,
            "version": version,
            "put_ms": ms(accepted - sent),
            "first_router_ms": first,
            "last_router_ms": last,
            "put_sent_to_last_router_ms": ms(last_at.saturating_duration_since(sent)),
            "per_router_ms": per_router,
        }))
    } else {
        None
    };
    fleet.check()?;

    // Report.
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let (date, stamp) = utc(now);
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let changes = json!({
        "put_ms": stats(&put_ms),
        "first_router_ms": stats(&first_ms),
        "last_router_ms": stats(&last_ms),
        "put_sent_to_last_router_ms": stats(&sent_last_ms),
        "changes_some_router_served_at_first_poll": first_poll_first,
        "changes_every_router_served_at_first_poll": first_poll_all,
        "per_change": per_change,
    });
    let report = json!({
        "benchmark": "config_propagation",
        "date_utc": date,
        "unix_time": now,
        "settings": {
            "routers": args.routers,
            "changes": args.changes,
            "large_routes": args.large_routes,
            "poll_interval_us": args.poll_interval_us,
            "change_deadline_ms": args.change_deadline_ms,
            "large_deadline_ms": args.large_deadline_ms,
            "router_workers": 1,
        },
        "machine": { "cpus": cpus, "loadavg_start": loadavg_start },
        "binaries": {
            "router": router_bin.display().to_string(),
            "lightbulb": lightbulb_bin.display().to_string(),
            "demo_model": demo_bin.display().to_string(),
        },
        "changes": changes,
        "large_push": large,
    });

    println!();
    println!(
        "Config propagation, {} router(s), {} single-route changes ({date}, {cpus} CPUs, load at start {loadavg_start})",
        args.routers, args.changes
    );
    println!(
        "{:<34} {:>8} {:>8} {:>8} {:>8}",
        "ms", "p50", "p90", "p99", "max"
    );
    println!(
        "{}",
        stats_line("PUT /v1/routes/{key} round trip", &changes["put_ms"])
    );
    println!(
        "{}",
        stats_line(
            "PUT accepted -> first router serves",
            &changes["first_router_ms"]
        )
    );
    println!(
        "{}",
        stats_line(
            "PUT accepted -> last router serves",
            &changes["last_router_ms"]
        )
    );
    println!(
        "{}",
        stats_line(
            "PUT sent -> last router serves",
            &changes["put_sent_to_last_router_ms"]
        )
    );
    println!(
        "changes already served at the first poll: by some router {first_poll_first}, by every router {first_poll_all}"
    );
    if let Some(l) = &report["large_push"].as_object() {
        let f = |k: &str| l[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "large push ({} routes, {:.1} MB): PUT {:.0} ms; accepted -> first router {:.0} ms, last router {:.0} ms; PUT sent -> last router {:.0} ms",
            l["routes"],
            f("body_bytes") / 1e6,
            f("put_ms"),
            f("first_router_ms"),
            f("last_router_ms"),
            f("put_sent_to_last_router_ms"),
        );
    }
    fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let out = out_dir.join(format!("propagation-{}r-{stamp}.json", args.routers));
    fs::write(&out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!("report: {}", out.display());

    drop(fleet);
    if args.keep_work {
        let kept = work.keep();
        println!("work directory kept: {}", kept.display());
    }
    Ok(())
}

fn routes_len(rules: &Value) -> usize {
    rules["routes"].as_object().map_or(0, Map::len)
}
