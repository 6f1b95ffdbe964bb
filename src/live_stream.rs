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

/// How long a stopped encoder has to finish its output before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
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
}

impl LiveStreamer {
    pub fn new(
        cfg: StreamingSection,
        bridge: Arc<ColibriService>,
        loopback: IpAddr,
        work_dir: PathBuf,
    ) -> Arc<LiveStreamer> {
        Arc::new(LiveStreamer {
            cfg,
            bridge,
            loopback,
            work_dir,
            sessions: Arc::default(),
        })
    }
}

/// Stream keys are names on the RTMP server: letters, digits and `-_.`, as the seed's
/// server expects; nothing that could change the URL.
fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 128
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !k.starts_with('.')
}

/// Where one session's output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Output {
    Rtmp(String),
    File(PathBuf),
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
                if self.cfg.rtmp_url.is_empty() {
                    return unavailable("live streaming is not configured");
                }
                let key = req.streamid.as_deref().unwrap_or("").trim();
                if !valid_key(key) {
                    return Err((
                        StanzaError::BAD_REQUEST,
                        "the stream key may hold letters, digits, '-', '_' and '.' only"
                            .to_string(),
                    ));
                }
                Output::Rtmp(format!("{}/{key}", self.cfg.rtmp_url.trim_end_matches('/')))
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
        tokio::spawn(async move {
            let id = run.session_id.clone();
            run.run().await;
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
        let written = std::fs::create_dir_all(&self.work_dir)
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
            // The bridge (re)starts the feed with each encoder run: a fresh keyframe and
            // silence from the first moment.
            if let Err(e) = self
                .bridge
                .set_broadcast(&self.meeting_id, Some(target.clone()))
            {
                tracing::warn!(room = %self.room, error = %e, "live stream: the bridge refused the feed");
                failure = Some("error");
                break;
            }
            let end = self.encode(&sdp_path, &mut on).await;
            match end {
                RunEnd::Stopped => break,
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
    async fn encode(&self, sdp_path: &std::path::Path, on: &mut bool) -> RunEnd {
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
        Output::Rtmp(url) => url
            .rsplit_once('/')
            .map_or(url.clone(), |(u, _)| format!("{u}/…")),
        Output::File(p) => p.display().to_string(),
    }
}

/// The encoder's command line (docs/streaming.md): the session description in, the audio
/// slots mixed, the picture scaled into the configured size, H.264 + AAC out.
fn ffmpeg_args(cfg: &StreamingSection, sdp: &std::path::Path, out: &Output) -> Vec<String> {
    let (w, h, fps) = (cfg.width, cfg.height, cfg.fps);
    let inputs: String = (0..cfg.audio_mix).map(|i| format!("[0:a:{i}]")).collect();
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
                "{inputs}amix=inputs={}:normalize=0,aresample=async=1000[a]",
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
            (fps * 2).to_string(),
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
        Output::Rtmp(url) => {
            a.extend(["-f".into(), "flv".into(), url.clone()]);
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
        assert!(valid_key("stream5"));
        assert!(valid_key("X-lecture_2026.1"));
        for bad in ["", "a/b", "../x", ".hidden", "a b", "a?b=c", "ä"] {
            assert!(!valid_key(bad), "{bad}");
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
        let out = Output::Rtmp("rtmp://s/live/secret".into());
        let a = ffmpeg_args(&cfg, std::path::Path::new("/x.sdp"), &out);
        let fc = &a[a.iter().position(|x| x == "-filter_complex").unwrap() + 1];
        assert!(fc.starts_with("[0:a:0][0:a:1][0:a:2]amix=inputs=3"), "{fc}");
        assert_eq!(a.last().unwrap(), "rtmp://s/live/secret");
        assert_eq!(describe(&out), "rtmp://s/live/…");
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
