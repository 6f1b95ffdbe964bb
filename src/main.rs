//! meetd: the whole server side of a Jitsi Meet deployment in one program.
#![forbid(unsafe_code)]

mod acme;
mod audio_mix;
mod bridge;
mod bridge_pool;
mod cascade;
mod colibri_xmpp;
mod config;
mod dialin;
mod doctor;
mod hls;
mod http;
mod http_api;
mod live_stream;
mod logging;
mod relay_channel;
mod reload;
mod shared_port;
mod sip;
mod storage;
mod tls;
mod turn;
mod web;
mod webroot;
mod xmpp_link;

use std::io::BufRead;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, Listen};
use crate::storage::Storage;

#[derive(Parser)]
#[command(name = "meetd", version, about = "Jitsi Meet server in one program")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server.
    Serve(Overrides),
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Check this deployment (configuration, listeners, media addresses, TLS, DNS, clock,
    /// database, web root) and say what to fix; exit code 1 on errors.
    Doctor(Overrides),
    /// Manage internal accounts (passwords are read from standard input).
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the effective configuration (file plus flags) as TOML.
    Print(Overrides),
}

#[derive(Subcommand)]
enum UserCmd {
    /// Create an account: `meetd user add focus@auth.meet.jitsi`.
    Add(UserArgs),
    /// Delete an account and everything stored about it (a data-subject erasure request).
    Remove(UserArgs),
    /// Print, as JSON, everything the database holds about an account (a data-subject
    /// access request).
    Export(UserArgs),
    /// Change an account's password.
    Passwd(UserArgs),
    /// List accounts.
    List(Common),
}

#[derive(Args)]
struct UserArgs {
    /// user@domain (a bare user name means the auth domain).
    jid: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Clone)]
struct Common {
    /// Configuration file (meetd.toml).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Data directory (database, certificate).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct Overrides {
    #[command(flatten)]
    common: Common,
    /// HTTP listener address, or off.
    #[arg(long, value_parser = Listen::parse)]
    http: Option<Listen>,
    /// HTTPS listener address, or off.
    #[arg(long, value_parser = Listen::parse)]
    https: Option<Listen>,
    /// XMPP client (TCP, STARTTLS) listener address, or off.
    #[arg(long, value_parser = Listen::parse)]
    c2s: Option<Listen>,
    /// XEP-0114 component listener address, or off.
    #[arg(long, value_parser = Listen::parse)]
    component: Option<Listen>,
    /// UDP port of the media engine.
    #[arg(long)]
    media_port: Option<u16>,
    /// ICE-TCP port of the media engine (0: off).
    #[arg(long)]
    media_tcp_port: Option<u16>,
    /// UDP and TCP port of the embedded TURN server (0: off).
    #[arg(long)]
    turn_port: Option<u16>,
    /// Address announced as ICE host candidate (repeatable).
    #[arg(long)]
    advertise_ip: Vec<IpAddr>,
    /// XMPP domain (the other domains follow it unless configured).
    #[arg(long)]
    domain: Option<String>,
    /// Unpacked Jitsi Meet web build to serve.
    #[arg(long)]
    web_root: Option<PathBuf>,
    /// Public base URL, e.g. https://meet.example.com.
    #[arg(long)]
    public_url: Option<String>,
    /// Log level or tracing filter (info, debug, meetd_xmpp=trace, ...).
    #[arg(long)]
    log_level: Option<String>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
    /// "all" (everything, the default) or "bridge" (only the media engine and its bridge
    /// channel, driven over XMPP by another meetd's focus or a stock Jicofo).
    #[arg(long)]
    role: Option<String>,
}

fn load(common: &Common) -> Result<Config, config::ConfigError> {
    let mut cfg = Config::load(common.config.as_deref())?;
    if let Some(d) = &common.data_dir {
        cfg.server.data_dir = d.clone();
    }
    Ok(cfg)
}

fn effective(o: &Overrides) -> Result<Config, config::ConfigError> {
    let mut cfg = load(&o.common)?;
    if let Some(v) = &o.http {
        cfg.listen.http = v.clone();
    }
    if let Some(v) = &o.https {
        cfg.listen.https = v.clone();
    }
    if let Some(v) = &o.c2s {
        cfg.listen.c2s = v.clone();
    }
    if let Some(v) = &o.component {
        cfg.listen.component = v.clone();
    }
    if let Some(v) = o.media_port {
        cfg.media.port = v;
    }
    if let Some(v) = o.media_tcp_port {
        cfg.media.tcp_port = v;
    }
    if let Some(v) = o.turn_port {
        cfg.turn.port = v;
    }
    if !o.advertise_ip.is_empty() {
        cfg.media.advertise_ips = o.advertise_ip.clone();
    }
    if let Some(v) = &o.domain {
        cfg.server.domain = v.clone();
    }
    if let Some(v) = &o.web_root {
        cfg.web.root = v.display().to_string();
    }
    if let Some(v) = &o.public_url {
        cfg.server.public_url = v.clone();
    }
    if let Some(v) = &o.log_level {
        cfg.log.level = v.clone();
    }
    if o.log_json {
        cfg.log.format = "json".into();
    }
    if let Some(v) = &o.role {
        cfg.server.role = v.clone();
    }
    cfg.apply_role();
    cfg.validate()?;
    Ok(cfg)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Config {
            cmd: ConfigCmd::Print(o),
        } => match effective(&o) {
            Ok(cfg) => match toml::to_string_pretty(&cfg) {
                Ok(s) => {
                    print!("{s}");
                    Ok(())
                }
                Err(e) => Err(Failure::Runtime(e.into())),
            },
            Err(e) => Err(Failure::Config(e)),
        },
        Cmd::Serve(o) => match effective(&o) {
            Ok(cfg) => {
                runtime().and_then(|rt| rt.block_on(serve(cfg, o)).map_err(Failure::Runtime))
            }
            Err(e) => Err(Failure::Config(e)),
        },
        Cmd::User { cmd } => runtime().and_then(|rt| rt.block_on(user(cmd))),
        Cmd::Doctor(o) => match effective(&o) {
            Ok(cfg) => runtime().and_then(|rt| {
                let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
                let findings = rt.block_on(doctor::run(&cfg));
                if doctor::print(&findings) {
                    Err(Failure::Findings)
                } else {
                    Ok(())
                }
            }),
            Err(e) => {
                println!("ERROR configuration: {e}");
                Err(Failure::Config(e))
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Findings) => ExitCode::FAILURE,
        Err(Failure::Config(e)) => {
            eprintln!("meetd: configuration error: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("meetd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    /// `meetd doctor` found errors (it printed them).
    Findings,
    Config(config::ConfigError),
    Runtime(anyhow::Error),
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))
}

/// HLS of the live streams from meetd itself (`[streaming] hls`, src/hls.rs).
async fn start_hls(cfg: &Config, storage: &storage::Storage) -> anyhow::Result<hls::Hls> {
    let st = &cfg.streaming;
    let dir = cfg.server.data_dir.join("live");
    if !st.rtmp_url.is_empty() && !live_stream::tee_safe(&dir.display().to_string()) {
        anyhow::bail!(
            "streaming.hls with rtmp_url: the HLS directory {} must not hold spaces, quotes, \
             backslashes, '|', '[' or ']' (ffmpeg's tee muxer); choose another server.data_dir",
            dir.display()
        );
    }
    let script = (!st.hls_js.is_empty()).then(|| std::path::PathBuf::from(&st.hls_js));
    if let Some(p) = &script
        && !p.is_file()
    {
        tracing::warn!(path = %p.display(), "streaming.hls_js: no such file; the player page relies on the browser's own HLS");
    }
    let secret = storage
        .secret("hls-sign-in")
        .await
        .map_err(|e| anyhow::anyhow!("database: {e}"))?;
    hls::Hls::new(dir.clone(), script, &secret)
        .map_err(|e| anyhow::anyhow!("streaming.hls: {}: {e}", dir.display()))
}

async fn open_storage(cfg: &Config) -> anyhow::Result<Storage> {
    std::fs::create_dir_all(&cfg.server.data_dir)
        .map_err(|e| anyhow::anyhow!("data directory {}: {e}", cfg.server.data_dir.display()))?;
    if !cfg.database.url.is_empty() {
        return Ok(Storage::connect(&cfg.database.url).await?);
    }
    Ok(Storage::open(&cfg.sqlite_path()).await?)
}

async fn serve(mut cfg: Config, flags: Overrides) -> anyhow::Result<()> {
    // As configured, before the defaults filled in below: what a reload compares against.
    let configured = cfg.clone();
    logging::set_own_addresses(&cfg);
    let log = logging::init(&cfg).map_err(|e| anyhow::anyhow!("log.dir {}: {e}", cfg.log.dir))?;
    logging::spawn_sweeper(&cfg, log.retention_days.clone());
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let storage = open_storage(&cfg).await?;
    let secret = storage.secret("scram-unknown-user").await?;
    meetd_xmpp::sasl::set_unknown_user_secret(&secret);
    let embedded_turn = cfg.turn.embedded(cfg.listen.https.addr().is_some());
    if embedded_turn {
        if cfg.turn.secret.is_empty() {
            let s = storage.secret("turn").await?;
            cfg.turn.secret = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s);
        }
        let announced = turn::announced(&cfg);
        cfg.turn.services.extend(announced);
    }
    let tls_files = if cfg.tls.acme {
        acme::files(&cfg)?
    } else {
        tls::ensure(&cfg)?
    };
    let tls_cfg = tls::server_config(&tls_files)?;

    let xcfg = cfg.xmpp();
    let muc_cfg = cfg.muc(&xcfg);
    let brewery_cfg = cfg.brewery(&xcfg);
    let resume_timeout = xcfg.sm_resume_timeout;
    let server = meetd_xmpp::Server::new(xcfg, storage::accounts(&storage));
    let previous = read_handoff(&cfg, resume_timeout);
    if !previous.is_empty() {
        tracing::info!(
            sessions = previous.len(),
            "the previous meetd's clients may resume their streams here"
        );
        server.set_adoptable(previous, std::time::Instant::now() + resume_timeout);
    }
    let jwt = cfg.auth.mode == "jwt";
    if jwt {
        let tokens = meetd_xmpp::token::TokenAuthority::new(cfg.token_config()?)
            .map_err(|e| anyhow::anyhow!("auth.jwt: {e}"))?;
        server.set_token_authority(Arc::new(tokens));
    }
    // This process's shard (a restarted meetd is another one: docs/operations.md) and
    // release, announced as stock's jiconop does.
    let shard = format!("meetd-{:08x}", rand::random::<u32>());
    server.add_identity("server", "shard", &shard);
    server.add_identity("server", "release", env!("CARGO_PKG_VERSION"));
    // Jitsi's room modules, each one file over the MUC's room events.
    let metadata = cfg.metadata_domain(&server.config);
    server.add_identity("component", "room_metadata", &metadata);
    let mut modules: Vec<meetd_xmpp::muc::ModuleFactory> = Vec::new();
    if jwt {
        // First: a token for another room is refused before anything else looks at the join.
        let ids = server.token_identities.clone();
        let breakout = cfg.breakout_rooms.enabled.then(|| cfg.breakout_domain());
        modules.push(Arc::new(move || {
            Box::new(meetd_xmpp::muc::token::TokenRooms::new(
                ids.clone(),
                breakout.clone(),
            )) as Box<dyn meetd_xmpp::muc::RoomModule>
        }));
    }
    {
        // What moderators may use, for those whose token does not say (mod_jitsi_permissions).
        let ids = jwt.then(|| server.token_identities.clone());
        let admins = muc_cfg.admins.clone();
        modules.push(Arc::new(move || {
            Box::new(meetd_xmpp::muc::permissions::Permissions::new(
                ids.clone(),
                admins.clone(),
            )) as Box<dyn meetd_xmpp::muc::RoomModule>
        }));
    }
    if cfg.lobby.enabled || cfg.auth.wait_for_host {
        let lobby = cfg.lobby_domain();
        server.add_identity("component", "lobbyrooms", &lobby);
        let (admins, muc, mut l) = (
            muc_cfg.admins.clone(),
            muc_cfg.domain.clone(),
            cfg.lobby.clone(),
        );
        if cfg.sip.enabled {
            // A caller with the meeting's PIN does not wait in the lobby (docs/sip.md §3).
            l.whitelist.push(cfg.sip_gateway_bare(&server.config));
        }
        // Wait for host: signed-in users of the main domain, or token moderators, are the hosts.
        use meetd_xmpp::muc::lobby::Hosts;
        let hosts = cfg.auth.wait_for_host.then(|| {
            if jwt {
                Hosts::TokenModerators(server.token_identities.clone())
            } else {
                Hosts::Domain(server.config.domain.clone())
            }
        });
        modules.push(Arc::new(move || {
            let lobby = meetd_xmpp::muc::lobby::Lobby::new(
                admins.clone(),
                &muc,
                &lobby,
                l.whitelist.clone(),
                l.max_waiting,
            );
            Box::new(match &hosts {
                Some(h) => lobby.wait_for_host(h.clone()),
                None => lobby,
            }) as Box<dyn meetd_xmpp::muc::RoomModule>
        }));
    }
    if cfg.breakout_rooms.enabled {
        let breakout = cfg.breakout_domain();
        server.add_identity("component", "breakout_rooms", &breakout);
        let (admins, muc, max) = (
            muc_cfg.admins.clone(),
            muc_cfg.domain.clone(),
            cfg.breakout_rooms.max_rooms,
        );
        modules.push(Arc::new(move || {
            Box::new(meetd_xmpp::muc::breakout_rooms::BreakoutRooms::new(
                &muc,
                &breakout,
                admins.clone(),
                max,
            )) as Box<dyn meetd_xmpp::muc::RoomModule>
        }));
    }
    if cfg.polls.enabled {
        let polls = format!("polls.{}", server.config.domain);
        server.add_identity("component", "polls", &polls);
        let limits = meetd_xmpp::muc::polls::PollLimits {
            per_room: cfg.polls.max_per_room,
            options: cfg.polls.max_options,
        };
        modules.push(Arc::new(move || {
            Box::new(meetd_xmpp::muc::polls::Polls::new(&polls, limits))
                as Box<dyn meetd_xmpp::muc::RoomModule>
        }));
    }
    if cfg.end_conference.enabled {
        let end = format!("endconference.{}", server.config.domain);
        server.add_identity("component", "end_conference", &end);
        let muc = muc_cfg.domain.clone();
        modules.push(Arc::new(move || {
            Box::new(meetd_xmpp::muc::end_conference::EndConference::new(
                &end, &muc,
            )) as Box<dyn meetd_xmpp::muc::RoomModule>
        }));
    }
    if cfg.av_moderation.enabled {
        let av = cfg.av_moderation_domain(&server.config);
        server.add_identity("component", "av_moderation", &av);
        modules.push(Arc::new(move || {
            Box::new(meetd_xmpp::muc::av_moderation::AvModeration::new(&av))
                as Box<dyn meetd_xmpp::muc::RoomModule>
        }));
    }
    if cfg.speaker_stats.enabled {
        let stats = format!("speakerstats.{}", server.config.domain);
        server.add_identity("component", "speakerstats", &stats);
        let (admins, max) = (muc_cfg.admins.clone(), cfg.speaker_stats.max_per_room);
        modules.push(Arc::new(move || {
            Box::new(meetd_xmpp::muc::speaker_stats::SpeakerStats::new(
                &stats,
                admins.clone(),
                max,
            )) as Box<dyn meetd_xmpp::muc::RoomModule>
        }));
    }
    if let Some(view) = muc_cfg.visitors.clone() {
        // docs/visitors.md §4: visitors' requests to join, moderators' answers.
        let domain = format!("visitors.{}", server.config.domain);
        server.add_identity("component", "visitors", &domain);
        let focus = format!("focus@{}", server.config.auth_domain);
        modules.push(Arc::new(move || {
            Box::new(meetd_xmpp::muc::visitors::Visitors::new(
                &domain,
                &view.muc_domain,
                &focus,
                rand::random(),
            )) as Box<dyn meetd_xmpp::muc::RoomModule>
        }));
    }
    let token_ids = server.token_identities.clone();
    modules.push(Arc::new(move || {
        Box::new(
            meetd_xmpp::muc::metadata::RoomMetadata::new(&metadata)
                .with_identities(token_ids.clone()),
        ) as Box<dyn meetd_xmpp::muc::RoomModule>
    }));
    let muc_domain = muc_cfg.domain.clone();
    let rooms = meetd_xmpp::muc::start(server.router.clone(), muc_cfg, modules)
        .ok_or_else(|| anyhow::anyhow!("MUC domain {muc_domain} taken"))?;
    let system_tokens = match cfg.system_token_config()? {
        Some(c) => Some(Arc::new(
            meetd_xmpp::token::TokenAuthority::new(c)
                .map_err(|e| anyhow::anyhow!("http_api system keys: {e}"))?,
        )),
        None => None,
    };
    let api = Arc::new(http_api::HttpApi {
        cfg: cfg.http_api.clone(),
        domain: server.config.domain.clone(),
        muc_domain,
        rooms: rooms.clone(),
        system: system_tokens,
        focus_jid: format!("focus@{}/focus", server.config.auth_domain),
    });
    meetd_xmpp::muc::start(server.router.clone(), brewery_cfg, Vec::new());
    let bridge::Started {
        service: bridge,
        hub: channels,
        engine,
        tcp_on_https,
        media_ips,
    } = bridge::start(&cfg)?;
    let turn_server = if embedded_turn {
        Some(turn::Turn::start(turn::setup(&cfg, &media_ips)).await?)
    } else {
        None
    };
    let hls = if cfg.streaming.enabled && cfg.streaming.hls {
        Some(Arc::new(start_hls(&cfg, &storage).await?))
    } else {
        None
    };
    let focus = cfg.focus.enabled.then(|| {
        let mut opts = cfg.focus(&server.config);
        opts.rooms = Some(rooms.clone());
        if cfg.streaming.enabled {
            // The encoders listen on loopback in the bridge socket's family.
            let loopback = if media_ips.iter().any(|ip| ip.is_ipv6()) {
                std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
            } else {
                std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
            };
            let streams: Arc<dyn meetd_jingle::live_stream::LiveStreams> =
                live_stream::LiveStreamer::new(
                    cfg.streaming.clone(),
                    bridge.clone(),
                    loopback,
                    cfg.server.data_dir.join("streams"),
                    hls.clone(),
                );
            opts.live_streams = Some(streams);
        }
        // Rooms whose bridge left the pool, for the focus to move (bounded: a full queue is
        // logged, and the conference moves on its next request).
        let (lost_tx, lost_rx) = tokio::sync::mpsc::channel(1024);
        let focus_bridge: Arc<dyn meetd_colibri::service::Bridge> =
            if cfg.focus.bridge_brewery.is_empty() {
                bridge.clone()
            } else {
                let x = &server.config;
                let pool = bridge_pool::BridgePool::start(
                    server.router.clone(),
                    cfg.focus.use_local_bridge.then(|| bridge.clone()),
                    &format!("{}@{}", cfg.focus.bridge_brewery, x.internal_muc_domain),
                    &format!("focus@{}/bridges", x.auth_domain),
                    &cfg.focus.region,
                    // The in-process bridge, when it sits in the same brewery, is the local one.
                    (cfg.bridge.brewery == cfg.focus.bridge_brewery).then(|| cfg.bridge.id.clone()),
                    match cfg.focus.bridge_selection.as_str() {
                        "split" => cascade::Selection::Split,
                        "region" => cascade::Selection::Region,
                        _ => cascade::Selection::Single,
                    },
                    cfg.focus.max_bridge_participants,
                    lost_tx,
                );
                let (p, e) = (pool.clone(), engine.clone());
                tokio::spawn(async move {
                    loop {
                        if let Some(s) = e.stats().await {
                            p.set_local_stress(s.engine_cpu_permille as f64 / 900.0);
                        }
                        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    }
                });
                pool
            };
        if !cfg.focus.bridge_brewery.is_empty() {
            opts.bridge_lost = Some(lost_rx);
        }
        meetd_jingle::focus::start(server.router.clone(), opts, focus_bridge)
    });
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bridge_xmpp = colibri_xmpp::Setup {
        service: bridge.clone(),
        engine: engine.clone(),
        region: cfg.bridge.region.clone(),
        draining: draining.clone(),
    };
    let x = &server.config;
    let brewery_room = format!("{}@{}", cfg.bridge.brewery, x.internal_muc_domain);
    if cfg.server.role == "bridge" {
        // docs/colibri2.md §4: a bridge for another meetd's (or a stock Jicofo's) focus.
        let link = xmpp_link::LinkConfig {
            url: cfg.bridge.xmpp_url.clone(),
            domain: x.auth_domain.clone(),
            username: cfg.bridge.xmpp_user.clone(),
            password: cfg.bridge.xmpp_password.clone(),
            resource: cfg.bridge.id.clone(),
        };
        colibri_xmpp::start_remote(bridge_xmpp, link, brewery_room, cfg.bridge.id.clone());
    } else if !cfg.bridge.brewery.is_empty() {
        colibri_xmpp::start_local(
            bridge_xmpp,
            server.router.clone(),
            colibri_xmpp::Identity {
                jid: format!("jvb@{}/{}", x.auth_domain, cfg.bridge.id),
                occupant: format!("{brewery_room}/{}", cfg.bridge.id),
                auth_domain: x.auth_domain.clone(),
            },
        );
    }
    if cfg.sip.enabled {
        sip::start(sip::Shared {
            cfg: cfg.sip.clone(),
            storage: storage.clone(),
            router: server.router.clone(),
            engine: Some(engine.clone()),
            gateway_bare: cfg.sip_gateway_bare(&server.config),
            focus_domain: server.config.focus_domain.clone(),
            tls: Some(tls_cfg.clone()),
        })
        .await?;
    }
    let bosh = meetd_xmpp::http_bind::Bosh::new(server.clone());
    let cfg = Arc::new(cfg);
    let front = Arc::new(http::Front {
        cfg: cfg.clone(),
        server: server.clone(),
        bosh,
        focus,
        bridge: bridge.clone(),
        channels,
        engine,
        web_root: web_root(&cfg)?,
        turn: turn_server.clone(),
        storage: storage.clone(),
        ready: Default::default(),
        shard: shard.clone(),
        acme: Default::default(),
        api,
        hls,
    });

    tracing::info!(
        domain = %cfg.server.domain,
        data_dir = %cfg.server.data_dir.display(),
        "meetd {} starting",
        env!("CARGO_PKG_VERSION")
    );
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = cfg.listen.http.addr() {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("listen.http {addr}: {e}"))?;
        tracing::info!(
            "HTTP listening on http://{} (WebSocket /xmpp-websocket, BOSH /http-bind, /config.js)",
            l.local_addr()?
        );
        let app = http::router(front.clone(), false);
        tasks.spawn(async move {
            // XMPP over WebSocket and BOSH are many small writes: no Nagle delay.
            let l = axum::serve::ListenerExt::tap_io(l, |t| {
                let _ = t.set_nodelay(true);
            });
            let r = axum::serve(
                l,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .await;
            anyhow::Ok(r?)
        });
    }
    let mut https_cfg = None;
    if let Some(addr) = cfg.listen.https.addr() {
        let rcfg =
            axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls_files.cert, &tls_files.key)
                .await
                .map_err(|e| anyhow::anyhow!("tls: {e}"))?;
        https_cfg = Some(rcfg.clone());
        let std_l = std::net::TcpListener::bind(addr)
            .map_err(|e| anyhow::anyhow!("listen.https {addr}: {e}"))?;
        std_l.set_nonblocking(true)?;
        tracing::info!(
            self_signed = tls_files.self_signed,
            "HTTPS listening on https://{}",
            std_l.local_addr()?
        );
        let app = http::router(front.clone(), true);
        // ICE-TCP before TLS, TURN after it, HTTPS for the rest (src/shared_port.rs).
        let tls = axum_server::tls_rustls::RustlsAcceptor::new(rcfg)
            .acceptor(shared_port::IceTcpOrTls::new(tcp_on_https));
        let turn_tls = turn_server.clone().filter(|_| cfg.turn.on_https);
        tasks.spawn(async move {
            axum_server::from_tcp(std_l)?
                .acceptor(shared_port::TurnOrHttps::new(tls, turn_tls))
                .serve(app.into_make_service_with_connect_info::<std::net::SocketAddr>())
                .await?;
            anyhow::Ok(())
        });
    }
    let acceptor: meetd_xmpp::tcp::TlsSource = Arc::new(parking_lot::RwLock::new(
        tokio_rustls::TlsAcceptor::from(tls_cfg),
    ));
    if let Some(addr) = cfg.listen.c2s.addr() {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("listen.c2s {addr}: {e}"))?;
        tracing::info!("XMPP c2s (STARTTLS) listening on {}", l.local_addr()?);
        let s = server.clone();
        let a = acceptor.clone();
        tasks.spawn(async move {
            meetd_xmpp::tcp::serve_c2s(s, l, Some(a), false).await;
            anyhow::Ok(())
        });
    }
    if let Some(addr) = cfg.listen.c2s_tls.addr() {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("listen.c2s_tls {addr}: {e}"))?;
        tracing::info!("XMPP c2s (direct TLS) listening on {}", l.local_addr()?);
        let s = server.clone();
        let a = acceptor.clone();
        tasks.spawn(async move {
            meetd_xmpp::tcp::serve_c2s(s, l, Some(a), true).await;
            anyhow::Ok(())
        });
    }
    if let Some(addr) = cfg.listen.component.addr() {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("listen.component {addr}: {e}"))?;
        tracing::info!(
            components = cfg.components.len(),
            "XMPP components (XEP-0114) listening on {}",
            l.local_addr()?
        );
        let s = server.clone();
        tasks.spawn(async move {
            meetd_xmpp::component::serve(s, l).await;
            anyhow::Ok(())
        });
    }
    if !tls_files.self_signed {
        for w in tls::chain_warnings(&tls_files) {
            tracing::warn!("{w}");
        }
    }
    let tls_now = Arc::new(tokio::sync::Notify::new());
    if cfg.tls.acme {
        tokio::spawn(acme::run(
            (*cfg).clone(),
            tls::TlsFiles {
                cert: tls_files.cert.clone(),
                key: tls_files.key.clone(),
                self_signed: false,
            },
            front.acme.clone(),
            tls_now.clone(),
        ));
    }
    tokio::spawn(tls::watch(
        tls_files,
        acceptor.clone(),
        https_cfg,
        std::time::Duration::from_secs(30),
        tls_now.clone(),
    ));
    let live = reload::Live {
        log,
        tls: tls_now,
        server: server.clone(),
    };
    tokio::spawn(reload_on_sighup(live, configured, flags));
    front.ready.store(true, Ordering::Release);
    tracing::info!("ready");

    tokio::select! {
        r = tasks.join_next() => match r {
            Some(Ok(Err(e))) => Err(e),
            Some(Err(e)) => Err(e.into()),
            _ => Ok(()),
        },
        _ = shutdown_signal() => {
            draining.store(true, Ordering::Relaxed);
            drain(&cfg, &front).await;
            let sessions = server.stop_and_hand_off();
            let n = sessions.len();
            match write_handoff(&cfg, sessions) {
                Ok(()) => tracing::info!(resumable_sessions = n, "shutting down; the next meetd can resume these streams"),
                Err(e) => tracing::warn!(error = %e, "shutting down; stream resumption records not written"),
            }
            Ok(())
        }
    }
}

/// `[server] drain_timeout_secs`: take no new conferences and wait for the running ones to
/// end, up to the timeout.
async fn drain(cfg: &Config, front: &http::Front) {
    let limit = std::time::Duration::from_secs(cfg.server.drain_timeout_secs);
    if limit.is_zero() {
        return;
    }
    if let Some(f) = &front.focus {
        f.drain();
    }
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = usize::MAX;
    loop {
        let n = front.bridge.conference_count();
        if n == 0 {
            tracing::info!("drained: no conference left");
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::info!(
                conferences = n,
                "drain timeout; stopping with conferences running"
            );
            return;
        }
        if n != last {
            tracing::info!(
                conferences = n,
                "draining: no new conferences, waiting for these to end"
            );
            last = n;
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = shutdown_signal() => {
                tracing::info!("second signal: stopping now");
                return;
            }
        }
    }
}

/// Where a stopping meetd leaves its resumable sessions for the next one (meetd_xmpp::handoff).
fn handoff_path(cfg: &Config) -> PathBuf {
    cfg.server.data_dir.join("resume-handoff.json")
}

fn write_handoff(cfg: &Config, sessions: Vec<meetd_xmpp::handoff::Record>) -> std::io::Result<()> {
    let f = meetd_xmpp::handoff::File::new(sessions, std::time::SystemTime::now());
    let json = serde_json::to_vec(&f).map_err(std::io::Error::other)?;
    let path = handoff_path(cfg);
    let tmp = path.with_extension("tmp");
    tls::write_private(&tmp, &json)?;
    std::fs::rename(&tmp, &path)
}

/// The previous meetd's resumable sessions, read once and deleted.
fn read_handoff(cfg: &Config, timeout: std::time::Duration) -> Vec<meetd_xmpp::handoff::Record> {
    let path = handoff_path(cfg);
    let Ok(data) = std::fs::read(&path) else {
        return Vec::new();
    };
    let _ = std::fs::remove_file(&path);
    match serde_json::from_slice::<meetd_xmpp::handoff::File>(&data) {
        Ok(f) => f.fresh(std::time::SystemTime::now(), timeout),
        Err(e) => {
            tracing::warn!(error = %e, file = %path.display(), "unreadable stream resumption records ignored");
            Vec::new()
        }
    }
}

fn web_root(cfg: &Config) -> anyhow::Result<Option<webroot::WebRoot>> {
    if cfg.web.root.is_empty() {
        return Ok(None);
    }
    let dir = PathBuf::from(&cfg.web.root);
    if !dir.join("index.html").is_file() {
        anyhow::bail!(
            "web.root {}: no index.html there (expected an unpacked Jitsi Meet web build)",
            dir.display()
        );
    }
    tracing::info!(root = %dir.display(), "serving the Jitsi Meet web app");
    Ok(Some(webroot::WebRoot { dir }))
}

/// SIGHUP: read the file and flags again and apply what can change while running.
async fn reload_on_sighup(live: reload::Live, mut running: Config, flags: Overrides) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            match effective(&flags) {
                Ok(new) => reload::report(&reload::apply(&live, &mut running, &new)),
                Err(e) => tracing::error!("SIGHUP: configuration error, nothing reloaded: {e}"),
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (live, &mut running, flags);
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn split_jid(cfg: &Config, s: &str) -> Result<(String, String), Failure> {
    let (u, d) = match s.split_once('@') {
        Some((u, d)) => (u.to_string(), d.to_string()),
        None => (s.to_string(), cfg.xmpp().auth_domain),
    };
    let j = meetd_xmpp::jid::BareJid::new(&format!("{u}@{d}")).map_err(|e| {
        Failure::Config(config::ConfigError(format!(
            "'{s}' is not a valid JID: {e}"
        )))
    })?;
    let node = j
        .node()
        .map(|n| n.as_str().to_lowercase())
        .unwrap_or_default();
    if node.is_empty() {
        return Err(Failure::Config(config::ConfigError(format!(
            "'{s}' has no user name"
        ))));
    }
    Ok((node, j.domain().as_str().to_string()))
}

fn read_password() -> Result<String, Failure> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Failure::Runtime(e.into()))?;
    let pw = line.trim_end_matches(['\n', '\r']).to_string();
    if pw.is_empty() {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "empty password on standard input"
        )));
    }
    Ok(pw)
}

async fn user(cmd: UserCmd) -> Result<(), Failure> {
    let common = match &cmd {
        UserCmd::Add(a) | UserCmd::Remove(a) | UserCmd::Passwd(a) | UserCmd::Export(a) => {
            a.common.clone()
        }
        UserCmd::List(c) => c.clone(),
    };
    let cfg = load(&common).map_err(Failure::Config)?;
    let st = open_storage(&cfg).await.map_err(Failure::Runtime)?;
    let rt = |e: storage::StorageError| Failure::Runtime(e.into());
    match cmd {
        UserCmd::Add(a) => {
            let (u, d) = split_jid(&cfg, &a.jid)?;
            let pw = read_password()?;
            let creds = meetd_xmpp::sasl::derive_credentials(&pw, cfg.auth.scram_iterations);
            if !st.set_account(&u, &d, &creds, true).await.map_err(rt)? {
                return Err(Failure::Runtime(anyhow::anyhow!("{u}@{d} already exists")));
            }
            println!("added {u}@{d}");
        }
        UserCmd::Passwd(a) => {
            let (u, d) = split_jid(&cfg, &a.jid)?;
            let pw = read_password()?;
            let creds = meetd_xmpp::sasl::derive_credentials(&pw, cfg.auth.scram_iterations);
            if !st.set_account(&u, &d, &creds, false).await.map_err(rt)? {
                return Err(Failure::Runtime(anyhow::anyhow!("{u}@{d} does not exist")));
            }
            println!("password changed for {u}@{d}");
        }
        UserCmd::Remove(a) => {
            let (u, d) = split_jid(&cfg, &a.jid)?;
            if !st.remove_account(&u, &d).await.map_err(rt)? {
                return Err(Failure::Runtime(anyhow::anyhow!("{u}@{d} does not exist")));
            }
            println!("removed {u}@{d}");
        }
        UserCmd::Export(a) => {
            let (u, d) = split_jid(&cfg, &a.jid)?;
            let Some((created, iterations)) = st.account_record(&u, &d).await.map_err(rt)? else {
                return Err(Failure::Runtime(anyhow::anyhow!("{u}@{d} does not exist")));
            };
            let created = std::time::UNIX_EPOCH
                + std::time::Duration::from_secs(u64::try_from(created).unwrap_or(0));
            let doc = serde_json::json!({
                "jid": format!("{u}@{d}"),
                "created": httpdate::fmt_http_date(created),
                "stored": {
                    "account": "the user name and domain above, and when the account was created",
                    "password": format!(
                        "not stored; only SCRAM-SHA-1 and SCRAM-SHA-256 verifiers derived from it                          (salted, {iterations} PBKDF2 iterations), which cannot be turned back into it"
                    ),
                },
                "meetings": "none: meetd keeps no record of meetings, participants, chat or media",
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&doc).map_err(|e| Failure::Runtime(e.into()))?
            );
        }
        UserCmd::List(_) => {
            for a in st.list_accounts().await.map_err(rt)? {
                println!("{a}");
            }
        }
    }
    Ok(())
}
