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

use meetd_colibri::media::{BroadcastTarget, VIDEO_PT};
use meetd_colibri::service::ColibriService;
use meetd_jingle::jibri::{Mode, StartRequest, Status};
use meetd_jingle::live_stream::{LiveStreams, StatusFn};
use meetd_xmpp::stanza::StanzaError;
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

use crate::audio_mix::{self, L16_PT};
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
        let Some(ports) = free_ports(self.loopback, 2) else {
            tracing::warn!(room = %self.room, "live stream: no free loopback ports");
            (self.status)(off(Some("error")));
            return;
        };
        // The speakers' slots go to meetd's mixer, and the mix to the encoder (src/audio_mix.rs).
        let to_encoder = SocketAddr::new(self.loopback, ports[1]);
        let mixer = match audio_mix::spawn(
            self.cfg.audio_mix,
            Duration::from_millis(u64::from(self.cfg.audio_mix_buffer_ms)),
            to_encoder,
            &self.room,
        ) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(room = %self.room, error = %e, "live stream: the audio mix does not run");
                (self.status)(off(Some("error")));
                return;
            }
        };
        let target = BroadcastTarget {
            video: SocketAddr::new(self.loopback, ports[0]),
            audio: vec![mixer.addr; self.cfg.audio_mix],
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
            .and_then(|()| std::fs::write(&sdp_path, sdp(&target, to_encoder, self.loopback)));
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
            let end = self
                .encode(&sdp_path, &target, to_encoder.port(), &mut on)
                .await;
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
        drop(mixer);
        tracing::info!(room = %self.room, secs = started.elapsed().as_secs(), "live stream ended");
        (self.status)(off(failure));
    }

    /// One encoder run, until it is stopped or exits.
    async fn encode(
        &self,
        sdp_path: &std::path::Path,
        target: &BroadcastTarget,
        audio_port: u16,
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
        let ports = [target.video.port(), audio_port];
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
        let mut lag = LagMeter::default();
        loop {
            tokio::select! {
                line = progress.next_line() => match line {
                    Ok(Some(l)) => {
                        let out_us = l
                            .strip_prefix("out_time_us=")
                            .and_then(|us| us.trim().parse::<i64>().ok());
                        if let Some(lag) = out_us.and_then(|t| lag.sample(Instant::now(), t)) {
                            tracing::info!(room = %self.room, lag_ms = lag.as_millis() as u64, "live stream: the encoder's output is behind its input's clock");
                        }
                        if out_us.is_some_and(|t| t > 0) && !was_on {
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
            // The mix comes continuous; a gap (a busy machine) is filled with silence
            // rather than closed, which would put the sound behind the picture.
            "[0:a:0]aresample=async=1000[a]".to_string(),
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

/// The session description the encoder reads: the VP8 picture from the bridge, and the
/// speakers' mix from meetd's mixer (48 kHz mono PCM).
fn sdp(t: &BroadcastTarget, mix: SocketAddr, ip: IpAddr) -> String {
    let fam = if ip.is_ipv6() { "IP6" } else { "IP4" };
    format!(
        "v=0\r\no=- 0 0 IN {fam} {ip}\r\ns=meetd live stream\r\nc=IN {fam} {ip}\r\nt=0 0\r\n\
         m=video {} RTP/AVP {VIDEO_PT}\r\na=rtpmap:{VIDEO_PT} VP8/90000\r\n\
         m=audio {} RTP/AVP {L16_PT}\r\na=rtpmap:{L16_PT} L16/48000/1\r\n",
        t.video.port(),
        mix.port()
    )
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

/// How far the encoder's output falls behind real time: the wall-clock time since its first
/// output less the output time it reports (`out_time_us`). A live encoder that cannot keep up,
/// or whose muxer holds one stream back waiting for the other, shows as a growing lag; a
/// player at the live edge of its HLS then runs dry. Reported when it moved by a second
/// since the last report.
#[derive(Debug, Default)]
struct LagMeter {
    first: Option<(Instant, i64)>,
    reported: Option<Duration>,
}

impl LagMeter {
    const STEP: Duration = Duration::from_secs(1);

    /// `out_us`: the encoder's output time; the lag to report, when it moved enough.
    fn sample(&mut self, now: Instant, out_us: i64) -> Option<Duration> {
        if out_us <= 0 {
            return None;
        }
        let (t0, o0) = *self.first.get_or_insert((now, out_us));
        let wall = now.saturating_duration_since(t0);
        let out = Duration::from_micros(u64::try_from(out_us - o0).unwrap_or(0));
        let lag = wall.saturating_sub(out);
        let moved = self.reported.is_none_or(|r| r.abs_diff(lag) >= Self::STEP);
        if moved && (self.reported.is_some() || lag >= Self::STEP) {
            self.reported = Some(lag);
            return Some(lag);
        }
        None
    }
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
    fn the_encoder_lag_is_reported_when_it_moves_by_a_second() {
        let t = Instant::now();
        let mut m = LagMeter::default();
        let s = |secs: f64| t + Duration::from_secs_f64(secs);
        assert_eq!(m.sample(s(0.0), 0), None, "no output yet");
        assert_eq!(
            m.sample(s(0.0), 2_000_000),
            None,
            "the first output is the reference"
        );
        assert_eq!(m.sample(s(5.0), 7_000_000), None, "in step");
        assert_eq!(m.sample(s(10.0), 11_500_000), None, "half a second behind");
        assert_eq!(m.sample(s(12.0), 11_000_000), Some(Duration::from_secs(3)));
        assert_eq!(
            m.sample(s(13.0), 12_500_000),
            None,
            "moved by half a second"
        );
        assert_eq!(
            m.sample(s(14.0), 15_000_000),
            Some(Duration::from_secs(1)),
            "caught up"
        );
    }

    #[test]
    fn stream_keys_are_plain_names() {
        assert!(valid_name("stream5"));
        assert!(valid_name("X-lecture_2026.1"));
        for bad in ["", "a/b", "../x", ".hidden", "a b", "a?b=c", "ä"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn the_session_description_has_the_picture_and_the_mix() {
        let t = BroadcastTarget {
            video: "127.0.0.1:40000".parse().unwrap(),
            audio: vec![
                "127.0.0.1:40002".parse().unwrap(),
                "127.0.0.1:40004".parse().unwrap(),
            ],
            max_height: 720,
            filler: Vec::new(),
        };
        let mix = "127.0.0.1:40010".parse().unwrap();
        let s = sdp(&t, mix, "127.0.0.1".parse().unwrap());
        assert!(s.contains("c=IN IP4 127.0.0.1\r\n"));
        let m: Vec<&str> = s.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(m, ["m=video 40000 RTP/AVP 96", "m=audio 40010 RTP/AVP 97"]);
        assert!(s.contains("a=rtpmap:97 L16/48000/1\r\n"));
        assert!(sdp(&t, mix, "::1".parse().unwrap()).contains("c=IN IP6 ::1"));
    }

    #[test]
    fn the_encoder_takes_the_mix_and_hides_the_key_in_logs() {
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
        assert_eq!(fc, "[0:a:0]aresample=async=1000[a]");
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
