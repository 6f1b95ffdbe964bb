//! Live streaming and recording done by meetd itself (docs/streaming.md): for each session
//! the bridge sends the conference's on-stage video and its speakers' audio as plain RTP over
//! loopback (`meetd_colibri::media::BroadcastTarget`) to one Debian ffmpeg process, which
//! mixes the audio, scales the picture and encodes H.264 + AAC to the RTMP server (or an MP4
//! file). This module runs those processes: ports, the session description, the encoder's
//! progress (the session is "on" once it wrote output), one restart when it dies, a clean
//! stop, and the encoder's CPU in the log.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meetd_colibri::media::{AUDIO_PT, BroadcastTarget, VIDEO_PT};
use meetd_colibri::service::ColibriService;
use meetd_jingle::jibri::{Mode, StartRequest, Status};
use meetd_jingle::live_stream::{LiveStreams, StatusFn};
use meetd_xmpp::stanza::StanzaError;
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

use crate::config::StreamingSection;
use crate::hls::{Hls, valid_name};

/// How long a stopped encoder has to finish its output before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a starting encoder has to open its ports before the feed starts anyway.
const LISTEN_WAIT: Duration = Duration::from_secs(10);
/// Encoder restarts per session after it died.
const RESTARTS: usize = 1;
/// Encoder error lines logged per run (the rest are counted).
const LOG_LINES: usize = 20;

/// meetd's own streams: see the module docs.
pub struct LiveStreamer {
    cfg: StreamingSection,
    bridge: Arc<ColibriService>,
    /// The loopback address the encoders listen on (the bridge's socket family).
    loopback: IpAddr,
    /// Where session descriptions are written (removed at the end of each session).
    work_dir: PathBuf,
    /// Running sessions by id, each with its stop signal.
    sessions: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
    /// Where live streams are also written as HLS (`[streaming] hls`).
    hls: Option<Arc<Hls>>,
}

impl LiveStreamer {
    pub fn new(
        cfg: StreamingSection,
        bridge: Arc<ColibriService>,
        loopback: IpAddr,
        work_dir: PathBuf,
        hls: Option<Arc<Hls>>,
    ) -> Arc<LiveStreamer> {
        Arc::new(LiveStreamer {
            cfg,
            bridge,
            loopback,
            work_dir,
            sessions: Arc::default(),
            hls,
        })
    }
}

/// Where one session's output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Output {
    /// A live stream: to the RTMP server, as HLS, or both.
    Stream {
        rtmp: Option<String>,
        hls: Option<HlsOut>,
    },
    File(PathBuf),
}

/// A live stream's HLS files (`src/hls.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct HlsOut {
    name: String,
    playlist: PathBuf,
    segments: PathBuf,
    segment_secs: u32,
    list_size: u32,
}

impl LiveStreams for LiveStreamer {
    fn start(
        &self,
        req: &StartRequest,
        meeting_id: &str,
        status: StatusFn,
    ) -> Result<(), (StanzaError, String)> {
        let unavailable = |why: &str| Err((StanzaError::SERVICE_UNAVAILABLE, why.to_string()));
        let output = match req.mode {
            Mode::Stream => {
                if self.cfg.rtmp_url.is_empty() && self.hls.is_none() {
                    return unavailable("live streaming is not configured");
                }
                // Stream keys are names on the RTMP server and in /live/: nothing that
                // could change the URL or the path.
                let key = req.streamid.as_deref().unwrap_or("").trim();
                if !valid_name(key) {
                    return Err((
                        StanzaError::BAD_REQUEST,
                        "the stream key may hold letters, digits, '-', '_' and '.' only"
                            .to_string(),
                    ));
                }
                Output::Stream {
                    rtmp: (!self.cfg.rtmp_url.is_empty())
                        .then(|| format!("{}/{key}", self.cfg.rtmp_url.trim_end_matches('/'))),
                    hls: self.hls.as_ref().map(|h| HlsOut {
                        name: key.to_string(),
                        playlist: h.playlist(key),
                        segments: h.segment_pattern(key),
                        segment_secs: self.cfg.hls_segment_secs,
                        list_size: self.cfg.hls_list_size,
                    }),
                }
            }
            Mode::File => {
                if self.cfg.recording_dir.is_empty() {
                    return unavailable("recording is off on this server");
                }
                let name = format!(
                    "{}-{}.mp4",
                    req.room.split('@').next().unwrap_or("room"),
                    &req.session_id[..req.session_id.len().min(8)]
                );
                Output::File(PathBuf::from(&self.cfg.recording_dir).join(name))
            }
        };
        let stop = Arc::new(Notify::new());
        {
            let mut s = self.sessions.lock();
            if s.len() >= self.cfg.max_concurrent {
                tracing::warn!(room = %req.room, limit = self.cfg.max_concurrent, "live stream refused: all encoders busy");
                return Err((
                    StanzaError::RESOURCE_CONSTRAINT,
                    "all live streams are in use".to_string(),
                ));
            }
            if let (Some(h), Output::Stream { hls: Some(o), .. }) = (&self.hls, &output)
                && !h.begin(&o.name)
            {
                tracing::warn!(room = %req.room, "live stream refused: its key is streaming already");
                return Err((
                    StanzaError::CONFLICT,
                    "a live stream with this key is running already".to_string(),
                ));
            }
            s.insert(req.session_id.clone(), stop.clone());
        }
        let run = Session {
            cfg: self.cfg.clone(),
            bridge: self.bridge.clone(),
            loopback: self.loopback,
            work_dir: self.work_dir.clone(),
            meeting_id: meeting_id.to_string(),
            session_id: req.session_id.clone(),
            room: req.room.clone(),
            output,
            status,
            stop,
        };
        let me = self.sessions.clone();
        // Its HLS name is free again, and its files gone, when the session ends.
        let hls = match (&self.hls, &run.output) {
            (Some(h), Output::Stream { hls: Some(o), .. }) => Some((h.clone(), o.name.clone())),
            _ => None,
        };
        tokio::spawn(async move {
            let id = run.session_id.clone();
            run.run().await;
            if let Some((h, name)) = hls {
                h.end(&name);
            }
            me.lock().remove(&id);
        });
        Ok(())
    }

    fn stop(&self, session_id: &str) {
        if let Some(n) = self.sessions.lock().get(session_id) {
            n.notify_one();
        }
    }
}

/// One running session.
struct Session {
    cfg: StreamingSection,
    bridge: Arc<ColibriService>,
    loopback: IpAddr,
    work_dir: PathBuf,
    meeting_id: String,
    session_id: String,
    room: String,
    output: Output,
    status: StatusFn,
    stop: Arc<Notify>,
}

/// How one encoder run ended.
enum RunEnd {
    /// Stopped by a moderator (or the conference's end).
    Stopped,
    /// The encoder exited by itself; whether it ever produced output.
    Died { was_on: bool },
    /// The bridge refused the feed.
    NoFeed,
}

impl Session {
    async fn run(self) {
        let off = |failure: Option<&str>| Status {
            status: Some("off".into()),
            failure: failure.map(str::to_string),
            should_retry: false,
        };
        let filler = match make_filler(&self.cfg).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(room = %self.room, error = %e, "live stream: the encoder does not run");
                (self.status)(off(Some("error")));
                return;
            }
        };
        let Some(ports) = free_ports(self.loopback, 1 + self.cfg.audio_mix) else {
            tracing::warn!(room = %self.room, "live stream: no free loopback ports");
            (self.status)(off(Some("error")));
            return;
        };
        let target = BroadcastTarget {
            video: SocketAddr::new(self.loopback, ports[0]),
            audio: ports[1..]
                .iter()
                .map(|p| SocketAddr::new(self.loopback, *p))
                .collect(),
            max_height: self.cfg.height,
            filler,
        };
        let sdp_path = self
            .work_dir
            .join(format!("stream-{}.sdp", self.session_id));
        let out_dir = match &self.output {
            Output::File(p) => p.parent().map(std::path::Path::to_path_buf),
            Output::Stream { .. } => None,
        };
        let written = out_dir
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::create_dir_all(&self.work_dir))
            .and_then(|()| std::fs::write(&sdp_path, sdp(&target, self.loopback)));
        if let Err(e) = written {
            tracing::warn!(room = %self.room, error = %e, path = %sdp_path.display(), "live stream: cannot write the session description");
            (self.status)(off(Some("error")));
            return;
        }
        let started = Instant::now();
        let mut restarts = RESTARTS;
        let mut on = false;
        let mut failure = None;
        loop {
            let end = self.encode(&sdp_path, &target, &mut on).await;
            match end {
                RunEnd::Stopped => break,
                RunEnd::NoFeed => {
                    failure = Some("error");
                    break;
                }
                RunEnd::Died { was_on } if restarts > 0 => {
                    restarts -= 1;
                    tracing::warn!(room = %self.room, was_on, "live stream: the encoder died; restarting it once");
                }
                RunEnd::Died { .. } => {
                    tracing::warn!(room = %self.room, "live stream: the encoder died again; the session ends");
                    failure = Some("error");
                    break;
                }
            }
        }
        if let Err(e) = self.bridge.set_broadcast(&self.meeting_id, None) {
            tracing::warn!(room = %self.room, error = %e, "live stream: the bridge kept the feed");
        }
        let _ = std::fs::remove_file(&sdp_path);
        tracing::info!(room = %self.room, secs = started.elapsed().as_secs(), "live stream ended");
        (self.status)(off(failure));
    }

    /// One encoder run, until it is stopped or exits.
    async fn encode(
        &self,
        sdp_path: &std::path::Path,
        target: &BroadcastTarget,
        on: &mut bool,
    ) -> RunEnd {
        let mut cmd = Command::new(&self.cfg.ffmpeg);
        cmd.args(ffmpeg_args(&self.cfg, sdp_path, &self.output))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(room = %self.room, error = %e, ffmpeg = %self.cfg.ffmpeg, "live stream: cannot start the encoder");
                return RunEnd::Died { was_on: false };
            }
        };
        let pid = child.id();
        let run_start = Instant::now();
        tracing::info!(room = %self.room, pid, output = %describe(&self.output), "live stream: encoder started");
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            let _ = child.kill().await;
            return RunEnd::Died { was_on: false };
        };
        let room = self.room.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut n = 0usize;
            while let Ok(Some(l)) = lines.next_line().await {
                n += 1;
                if n <= LOG_LINES {
                    tracing::warn!(%room, line = %l, "encoder");
                }
            }
        });
        // The bridge (re)starts the feed with each encoder run, with a fresh keyframe and
        // silence from the first moment, once the encoder listens: a VP8 decoder that missed
        // the keyframe cannot size its picture, and ffmpeg then gives up.
        let ports: Vec<u16> = std::iter::once(target.video.port())
            .chain(target.audio.iter().map(SocketAddr::port))
            .collect();
        let deadline = Instant::now() + LISTEN_WAIT;
        while !ports.iter().all(|p| udp_bound(self.loopback, *p))
            && Instant::now() < deadline
            && matches!(child.try_wait(), Ok(None))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Err(e) = self
            .bridge
            .set_broadcast(&self.meeting_id, Some(target.clone()))
        {
            tracing::warn!(room = %self.room, error = %e, "live stream: the bridge refused the feed");
            stop_gracefully(&mut child).await;
            return RunEnd::NoFeed;
        }
        let mut progress = BufReader::new(stdout).lines();
        let mut was_on = false;
        let mut cpu = CpuMeter::new(pid);
        loop {
            tokio::select! {
                line = progress.next_line() => match line {
                    Ok(Some(l)) => {
                        if let Some(us) = l.strip_prefix("out_time_us=")
                            && us.trim().parse::<i64>().is_ok_and(|t| t > 0)
                            && !was_on
                        {
                            was_on = true;
                            if !*on {
                                *on = true;
                                (self.status)(Status {
                                    status: Some("on".into()),
                                    failure: None,
                                    should_retry: false,
                                });
                                tracing::info!(room = %self.room, after_ms = run_start.elapsed().as_millis() as u64, "live stream on");
                            }
                        }
                        if l.starts_with("progress=") {
                            cpu.sample();
                        }
                    }
                    _ => {
                        // Its output closed: it exits.
                        let _ = child.wait().await;
                        cpu.log(&self.room);
                        return RunEnd::Died { was_on };
                    }
                },
                _ = self.stop.notified() => {
                    cpu.sample();
                    cpu.log(&self.room);
                    stop_gracefully(&mut child).await;
                    return RunEnd::Stopped;
                }
            }
        }
    }
}

/// `q` on its input lets ffmpeg finish the file or stream; killed if it takes too long.
async fn stop_gracefully(child: &mut Child) {
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"q\n").await;
        let _ = stdin.flush().await;
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

fn describe(o: &Output) -> String {
    match o {
        // The key is the stream's name on the server; it is logged without it.
        Output::Stream { rtmp, hls } => {
            let mut parts: Vec<String> = rtmp
                .iter()
                .map(|url| {
                    url.rsplit_once('/')
                        .map_or(url.clone(), |(u, _)| format!("{u}/…"))
                })
                .collect();
            if hls.is_some() {
                parts.push("HLS".into());
            }
            parts.join(" + ")
        }
        Output::File(p) => p.display().to_string(),
    }
}

/// The encoder's command line (docs/streaming.md): the session description in, the audio
/// slots mixed, the picture scaled into the configured size, H.264 + AAC out.
fn ffmpeg_args(cfg: &StreamingSection, sdp: &std::path::Path, out: &Output) -> Vec<String> {
    let (w, h, fps) = (cfg.width, cfg.height, cfg.fps);
    // A keyframe every two seconds (RTMP servers and players expect about that), or every
    // HLS segment where those are shorter: segments start at keyframes.
    let gop_secs = match out {
        Output::Stream { hls: Some(h), .. } => h.segment_secs.min(2),
        _ => 2,
    };
    // Each slot on its own timeline first: a speaker's stream has gaps where the bridge
    // dropped silence (shorter than the slot's idle time, so meetd fills none), and amix
    // joins what it gets sample after sample, whatever the timestamps say. Unfilled, every
    // gap put the audio further behind the picture (42 s after two minutes, seen with six
    // rooms, which hls.js could not play). aresample fills each gap with silence.
    let per_slot: String = (0..cfg.audio_mix)
        .map(|i| format!("[0:a:{i}]aresample=async=1000[s{i}];"))
        .collect();
    let inputs: String = (0..cfg.audio_mix).map(|i| format!("[s{i}]")).collect();
    let mut a: Vec<String> = [
        "-hide_banner",
        "-loglevel",
        "error",
        "-protocol_whitelist",
        "file,udp,rtp",
        "-reorder_queue_size",
        "128",
        "-i",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(sdp.display().to_string());
    a.extend(
        [
            "-filter_complex".to_string(),
            format!(
                "{per_slot}{inputs}amix=inputs={}:normalize=0,aresample=async=1000[a]",
                cfg.audio_mix
            ),
            "-map".into(),
            "0:v:0".into(),
            "-vf".into(),
            format!(
                "scale={w}:{h}:force_original_aspect_ratio=decrease,pad={w}:{h}:(ow-iw)/2:(oh-ih)/2,fps={fps},format=yuv420p"
            ),
            "-map".into(),
            "[a]".into(),
            "-c:v".into(),
            "libx264".into(),
            "-preset".into(),
            cfg.preset.clone(),
            "-tune".into(),
            "zerolatency".into(),
            "-b:v".into(),
            format!("{}k", cfg.video_kbps),
            "-maxrate".into(),
            format!("{}k", cfg.video_kbps),
            "-bufsize".into(),
            format!("{}k", cfg.video_kbps * 2),
            "-g".into(),
            (fps * gop_secs).to_string(),
            "-c:a".into(),
            "aac".into(),
            "-b:a".into(),
            format!("{}k", cfg.audio_kbps),
            "-ar".into(),
            "44100".into(),
            "-progress".into(),
            "pipe:1".into(),
            "-stats_period".into(),
            "1".into(),
        ],
    );
    match out {
        Output::Stream {
            rtmp: Some(url),
            hls: None,
        } => {
            a.extend(["-f".into(), "flv".into(), url.clone()]);
        }
        Output::Stream {
            rtmp: None,
            hls: Some(h),
        } => {
            a.extend(["-f".into(), "hls".into()]);
            a.extend(
                hls_options(h)
                    .into_iter()
                    .flat_map(|(k, v)| [format!("-{k}"), v]),
            );
            a.push(h.playlist.display().to_string());
        }
        Output::Stream {
            rtmp: Some(url),
            hls: Some(h),
        } => {
            // One encoding, two outputs (ffmpeg's tee muxer); either may fail alone. FLV
            // and HLS both need the codecs' global headers.
            let hls_opts: Vec<String> = hls_options(h)
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            a.extend([
                "-flags".into(),
                "+global_header".into(),
                "-f".into(),
                "tee".into(),
                format!(
                    "[f=flv:onfail=ignore]{url}|[f=hls:onfail=ignore:{}]{}",
                    hls_opts.join(":"),
                    h.playlist.display()
                ),
            ]);
        }
        Output::Stream {
            rtmp: None,
            hls: None,
        } => {
            // Refused in start(); nothing to write.
            a.extend(["-f".into(), "null".into(), "-".into()]);
        }
        Output::File(p) => {
            a.extend([
                "-f".into(),
                "mp4".into(),
                "-y".into(),
                p.display().to_string(),
            ]);
        }
    }
    a
}

/// ffmpeg's HLS muxer options: segments of `segment_secs` (the encoder makes a keyframe
/// at least that often), `list_size` in the playlist and as many older ones kept for a
/// player that lags behind before they are deleted, each written under a temporary name
/// first, with wall-clock times.
fn hls_options(h: &HlsOut) -> Vec<(&'static str, String)> {
    vec![
        ("hls_time", h.segment_secs.to_string()),
        ("hls_list_size", h.list_size.to_string()),
        ("hls_delete_threshold", h.list_size.to_string()),
        (
            "hls_flags",
            "delete_segments+temp_file+program_date_time+independent_segments".into(),
        ),
        ("hls_segment_filename", h.segments.display().to_string()),
    ]
}

/// Whether `v` can stand in ffmpeg's tee muxer argument as it is: none of the characters
/// that separate outputs and options there, or that need quoting (the RTMP URL and the HLS
/// directory are checked with this before a stream goes to both).
pub fn tee_safe(v: &str) -> bool {
    !v.chars()
        .any(|c| matches!(c, '|' | '[' | ']' | '\\' | '\'' | '"') || c.is_whitespace())
}

/// The session description the encoder reads: one VP8 stream, then the audio slots.
fn sdp(t: &BroadcastTarget, ip: IpAddr) -> String {
    let fam = if ip.is_ipv6() { "IP6" } else { "IP4" };
    let mut s = format!(
        "v=0\r\no=- 0 0 IN {fam} {ip}\r\ns=meetd live stream\r\nc=IN {fam} {ip}\r\nt=0 0\r\n\
         m=video {} RTP/AVP {VIDEO_PT}\r\na=rtpmap:{VIDEO_PT} VP8/90000\r\n",
        t.video.port()
    );
    for a in &t.audio {
        s.push_str(&format!(
            "m=audio {} RTP/AVP {AUDIO_PT}\r\na=rtpmap:{AUDIO_PT} opus/48000/2\r\n",
            a.port()
        ));
    }
    s
}

/// Whether some process has UDP `port` open on `ip`'s family (`/proc/net/udp`, `udp6`):
/// the encoder listens. Read, not probed with a bind, which could take the port from it.
fn udp_bound(ip: IpAddr, port: u16) -> bool {
    let table = if ip.is_ipv6() {
        "/proc/net/udp6"
    } else {
        "/proc/net/udp"
    };
    std::fs::read_to_string(table).is_ok_and(|t| udp_table_has_port(&t, port))
}

/// `/proc/net/udp` text: whether a socket's local address has `port`.
fn udp_table_has_port(table: &str, port: u16) -> bool {
    table.lines().skip(1).any(|l| {
        l.split_whitespace()
            .nth(1)
            .and_then(|local| local.rsplit_once(':'))
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            == Some(port)
    })
}

/// `n` even loopback ports whose next port (RTCP) is free too.
fn free_ports(ip: IpAddr, n: usize) -> Option<Vec<u16>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..200 {
        if out.len() == n {
            break;
        }
        let probe = UdpSocket::bind(SocketAddr::new(ip, 0)).ok()?;
        let p = probe.local_addr().ok()?.port() & !1;
        drop(probe);
        if p < 1024 || out.contains(&p) {
            continue;
        }
        let a = UdpSocket::bind(SocketAddr::new(ip, p));
        let b = UdpSocket::bind(SocketAddr::new(ip, p + 1));
        if a.is_ok() && b.is_ok() {
            out.push(p);
        }
    }
    (out.len() == n).then_some(out)
}

/// One VP8 keyframe of the configured size (a dark still), made by the encoder's own tool:
/// shown while no video is on stage.
async fn make_filler(cfg: &StreamingSection) -> anyhow::Result<Vec<u8>> {
    let out = Command::new(&cfg.ffmpeg)
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            &format!("color=c=0x202020:s={}x{}:r=1", cfg.width, cfg.height),
            "-frames:v",
            "1",
            "-c:v",
            "libvpx",
            "-b:v",
            "300k",
            "-f",
            "ivf",
            "-",
        ])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), out).await??;
    if !out.status.success() {
        anyhow::bail!(
            "{} exited with {}: {}",
            cfg.ffmpeg,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    ivf_first_frame(&out.stdout).ok_or_else(|| anyhow::anyhow!("no VP8 frame from {}", cfg.ffmpeg))
}

/// The first frame of an IVF file (32-byte file header, 12-byte frame header).
fn ivf_first_frame(b: &[u8]) -> Option<Vec<u8>> {
    if b.len() < 44 || &b[..4] != b"DKIF" {
        return None;
    }
    let hdr = usize::from(u16::from_le_bytes([b[6], b[7]]));
    let len = u32::from_le_bytes(b.get(hdr..hdr + 4)?.try_into().ok()?) as usize;
    b.get(hdr + 12..hdr + 12 + len).map(<[u8]>::to_vec)
}

/// The encoder's CPU time, from /proc (Linux).
struct CpuMeter {
    pid: Option<u32>,
    first: Option<(Instant, u64)>,
    last: Option<(Instant, u64)>,
}

impl CpuMeter {
    fn new(pid: Option<u32>) -> CpuMeter {
        CpuMeter {
            pid,
            first: None,
            last: None,
        }
    }

    fn sample(&mut self) {
        let Some(ticks) = self.pid.and_then(proc_cpu_ticks) else {
            return;
        };
        let s = (Instant::now(), ticks);
        self.first.get_or_insert(s);
        self.last = Some(s);
    }

    /// Percent of one core since the first sample.
    fn percent(&self) -> Option<f64> {
        let ((t0, c0), (t1, c1)) = (self.first?, self.last?);
        let secs = t1.saturating_duration_since(t0).as_secs_f64();
        // Linux reports process times in USER_HZ, 100 per second.
        (secs > 0.5).then(|| (c1.saturating_sub(c0)) as f64 / 100.0 / secs * 100.0)
    }

    fn log(&self, room: &str) {
        if let Some(p) = self.percent() {
            tracing::info!(%room, cpu_percent = format!("{p:.0}"), "live stream encoder CPU (of one core)");
        }
    }
}

/// utime + stime of a process, in clock ticks.
fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_keys_are_plain_names() {
        assert!(valid_name("stream5"));
        assert!(valid_name("X-lecture_2026.1"));
        for bad in ["", "a/b", "../x", ".hidden", "a b", "a?b=c", "ä"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn the_session_description_lists_video_then_the_audio_slots() {
        let t = BroadcastTarget {
            video: "127.0.0.1:40000".parse().unwrap(),
            audio: vec![
                "127.0.0.1:40002".parse().unwrap(),
                "127.0.0.1:40004".parse().unwrap(),
            ],
            max_height: 720,
            filler: Vec::new(),
        };
        let s = sdp(&t, "127.0.0.1".parse().unwrap());
        assert!(s.contains("c=IN IP4 127.0.0.1\r\n"));
        let m: Vec<&str> = s.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(
            m,
            [
                "m=video 40000 RTP/AVP 96",
                "m=audio 40002 RTP/AVP 111",
                "m=audio 40004 RTP/AVP 111"
            ]
        );
        assert!(sdp(&t, "::1".parse().unwrap()).contains("c=IN IP6 ::1"));
    }

    #[test]
    fn the_encoder_mixes_every_slot_and_hides_the_key_in_logs() {
        let cfg = StreamingSection {
            audio_mix: 3,
            ..Default::default()
        };
        let out = Output::Stream {
            rtmp: Some("rtmp://s/live/secret".into()),
            hls: None,
        };
        let a = ffmpeg_args(&cfg, std::path::Path::new("/x.sdp"), &out);
        let fc = &a[a.iter().position(|x| x == "-filter_complex").unwrap() + 1];
        assert!(
            fc.starts_with(
                "[0:a:0]aresample=async=1000[s0];[0:a:1]aresample=async=1000[s1];\
                 [0:a:2]aresample=async=1000[s2];[s0][s1][s2]amix=inputs=3"
            ),
            "{fc}"
        );
        assert_eq!(a.last().unwrap(), "rtmp://s/live/secret");
        assert_eq!(describe(&out), "rtmp://s/live/…");
    }

    #[test]
    fn hls_alone_or_with_rtmp_from_one_encoding() {
        let cfg = StreamingSection::default();
        let h = HlsOut {
            name: "lecture".into(),
            playlist: "/d/live/lecture.m3u8".into(),
            segments: "/d/live/lecture-%d.ts".into(),
            segment_secs: 2,
            list_size: 6,
        };
        let alone = ffmpeg_args(
            &cfg,
            std::path::Path::new("/x.sdp"),
            &Output::Stream {
                rtmp: None,
                hls: Some(h.clone()),
            },
        );
        let tail: Vec<&str> = alone[alone.len() - 13..]
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(
            tail,
            [
                "-f",
                "hls",
                "-hls_time",
                "2",
                "-hls_list_size",
                "6",
                "-hls_delete_threshold",
                "6",
                "-hls_flags",
                "delete_segments+temp_file+program_date_time+independent_segments",
                "-hls_segment_filename",
                "/d/live/lecture-%d.ts",
                "/d/live/lecture.m3u8"
            ]
        );
        let both = Output::Stream {
            rtmp: Some("rtmp://s:1935/live/lecture".into()),
            hls: Some(h),
        };
        let a = ffmpeg_args(&cfg, std::path::Path::new("/x.sdp"), &both);
        assert_eq!(a[a.len() - 2], "tee");
        assert_eq!(
            a.last().unwrap(),
            "[f=flv:onfail=ignore]rtmp://s:1935/live/lecture|[f=hls:onfail=ignore:hls_time=2:\
             hls_list_size=6:hls_delete_threshold=6:hls_flags=delete_segments+temp_file+\
             program_date_time+\
             independent_segments:hls_segment_filename=/d/live/lecture-%d.ts]/d/live/lecture.m3u8"
        );
        assert_eq!(describe(&both), "rtmp://s:1935/live/… + HLS");
        assert!(tee_safe("rtmp://s:1935/live") && tee_safe("/var/lib/meetd/live"));
        assert!(!tee_safe("/a b") && !tee_safe("rtmp://s/x|y") && !tee_safe("/a[1]"));
    }

    #[test]
    fn the_udp_table_tells_which_ports_are_open() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                 \x20 12: 0100007F:9C40 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000 0\n";
        assert!(udp_table_has_port(t, 40000));
        assert!(!udp_table_has_port(t, 40002));
        assert!(!udp_table_has_port("junk\nmore junk", 1));
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = s.local_addr().unwrap().port();
        assert!(udp_bound("127.0.0.1".parse().unwrap(), port));
    }

    #[test]
    fn ivf_frames_are_read_and_junk_is_not() {
        let mut f = b"DKIF".to_vec();
        f.extend_from_slice(&[0, 0, 32, 0]);
        f.resize(32, 0);
        f.extend_from_slice(&3u32.to_le_bytes());
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&[1, 2, 3]);
        assert_eq!(ivf_first_frame(&f), Some(vec![1, 2, 3]));
        assert_eq!(ivf_first_frame(&f[..40]), None);
        assert_eq!(ivf_first_frame(b"nope"), None);
    }
}
