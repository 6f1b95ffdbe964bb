//! The `meetd` command line: configuration errors, `config print`, `user` management.

use std::io::Write;
use std::process::{Command, Stdio};

fn meetd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meetd"))
}

/// `serve` flags for a meetd with only an HTTP listener on a free port, followed by the data
/// directory's value.
const QUIET_LISTENERS: [&str; 15] = [
    "--http",
    "127.0.0.1:0",
    "--https",
    "off",
    "--c2s",
    "off",
    "--component",
    "off",
    "--media-port",
    "0",
    "--media-tcp-port",
    "0",
    "--turn-port",
    "0",
    "--data-dir",
];

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("meetd-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn config_print_shows_defaults_and_flags() {
    let out = meetd()
        .args([
            "config",
            "print",
            "--domain",
            "meet.example.org",
            "--https",
            "off",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(s.contains("domain = \"meet.example.org\""), "{s}");
    assert!(s.contains("https = \"off\""), "{s}");
    assert!(s.contains("max_stanza_bytes = 262144"), "{s}");
}

#[test]
fn bad_config_key_exits_2_naming_it() {
    let d = tmpdir("badkey");
    let f = d.join("bad.toml");
    std::fs::write(&f, "[limits]\nmax_stanza_bites = 10\n").unwrap();
    let out = meetd()
        .args(["config", "print", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8(out.stderr).unwrap();
    assert!(e.contains("max_stanza_bites"), "{e}");
    assert_eq!(e.lines().count(), 1, "one clear line: {e}");

    std::fs::write(&f, "[auth]\nmode = \"ldap\"\n").unwrap();
    let out = meetd()
        .args(["serve", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("auth.mode"));
}

#[test]
fn bad_flag_exits_2() {
    let out = meetd()
        .args(["serve", "--http", "nowhere"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = meetd().args(["serve", "--no-such-flag"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

fn user(dir: &std::path::Path, args: &[&str], stdin: &str) -> std::process::Output {
    let mut c = meetd()
        .arg("user")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    c.wait_with_output().unwrap()
}

#[test]
fn user_add_list_passwd_remove() {
    let d = tmpdir("users");
    assert!(
        user(&d, &["add", "Alice@auth.meet.jitsi"], "pw1\n")
            .status
            .success()
    );
    assert!(
        !user(&d, &["add", "alice@auth.meet.jitsi"], "pw1\n")
            .status
            .success()
    );
    assert!(user(&d, &["add", "focus"], "pw2\n").status.success());
    let out = user(&d, &["list"], "");
    let s = String::from_utf8(out.stdout).unwrap();
    assert_eq!(s, "alice@auth.meet.jitsi\nfocus@auth.meet.jitsi\n");
    assert!(
        user(&d, &["passwd", "alice@auth.meet.jitsi"], "pw3\n")
            .status
            .success()
    );
    assert!(
        !user(&d, &["passwd", "bob@auth.meet.jitsi"], "pw3\n")
            .status
            .success()
    );
    assert!(
        !user(&d, &["add", "carol@auth.meet.jitsi"], "")
            .status
            .success()
    );
    // A data-subject access request: what is stored, as JSON, without secrets.
    let out = user(&d, &["export", "alice@auth.meet.jitsi"], "");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["jid"], "alice@auth.meet.jitsi");
    assert!(v["created"].as_str().unwrap().ends_with("GMT"));
    assert!(v["meetings"].as_str().unwrap().starts_with("none"));
    assert!(
        !user(&d, &["export", "bob@auth.meet.jitsi"], "")
            .status
            .success()
    );
    assert!(
        user(&d, &["remove", "alice@auth.meet.jitsi"], "")
            .status
            .success()
    );
    assert!(
        !user(&d, &["export", "alice@auth.meet.jitsi"], "")
            .status
            .success()
    );
    let s = String::from_utf8(user(&d, &["list"], "").stdout).unwrap();
    assert_eq!(s, "focus@auth.meet.jitsi\n");
    // The password itself is never stored.
    let db = std::fs::read(d.join("meetd.db")).unwrap_or_default();
    assert!(!db.windows(3).any(|w| w == b"pw2"));
}

#[test]
fn json_logs_say_what_listens_where() {
    use std::io::BufRead;
    let d = tmpdir("jsonlog");
    let mut c = meetd()
        .args(["serve", "--log-json"])
        .args(QUIET_LISTENERS)
        .arg(&d)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(c.stdout.take().unwrap());
    let mut lines = Vec::new();
    for line in out.lines().take(30) {
        let line = line.unwrap();
        let ready = line.contains("\"ready\"");
        lines.push(line);
        if ready {
            break;
        }
    }
    let _ = c.kill();
    let _ = c.wait();
    assert!(lines.iter().any(|l| l.contains("ready")), "{lines:?}");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{l}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("HTTP listening on http://127.0.0.1:")),
        "{lines:?}"
    );
}

/// SIGHUP applies the log level, limits and token keys, names what needs a restart, and
/// survives a broken file.
#[test]
fn sighup_reloads_what_it_can() {
    use std::io::BufRead;
    use std::time::{Duration, Instant};
    let d = tmpdir("sighup");
    let f = d.join("meetd.toml");
    std::fs::write(&f, "[log]\nlevel = \"info\"\n").unwrap();
    let mut c = meetd()
        .args(["serve", "--config"])
        .arg(&f)
        .args(QUIET_LISTENERS)
        .arg(&d)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out = std::io::BufReader::new(c.stdout.take().unwrap());
    std::thread::spawn(move || {
        for l in out.lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let wait_for = |what: &str| -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(l) if l.contains(what) => return l,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("no log line with {what:?}");
    };
    let hup = || {
        let ok = Command::new("kill")
            .args(["-HUP", &c.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    wait_for("ready");
    std::fs::write(
        &f,
        "[log]\nlevel = \"debug\"\n[limits]\nmax_sessions_per_ip = 3\n[lobby]\nenabled = false\n",
    )
    .unwrap();
    hup();
    let l = wait_for("configuration reloaded");
    assert!(
        l.contains("log.level") && l.contains("limits.max_sessions_per_ip"),
        "{l}"
    );
    let l = wait_for("take effect after a restart");
    assert!(
        l.contains("lobby.enabled") && !l.contains("log.level"),
        "{l}"
    );
    std::fs::write(&f, "[log]\nlevel = \"debug\"\n[limits]\nmax_sesions = 3\n").unwrap();
    hup();
    let l = wait_for("nothing reloaded");
    assert!(l.contains("max_sesions"), "{l}");
    assert!(c.try_wait().unwrap().is_none(), "meetd keeps running");
    let _ = c.kill();
    let _ = c.wait();
}

fn doctor(args: &[&str]) -> (bool, String) {
    let out = meetd().arg("doctor").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `meetd doctor`: a port another program holds, a missing web root and a leaf-only chain
/// are errors with a fix, and the exit code says so; a clean setup passes.
#[test]
fn doctor_names_what_to_fix() {
    let d = tmpdir("doctor");
    let dir = d.to_str().unwrap().to_string();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_at = taken.local_addr().unwrap().to_string();
    let http = format!("127.0.0.1:{}", free_port());
    let media = free_port().to_string();
    let base = [
        "--data-dir",
        &dir,
        "--c2s",
        "off",
        "--component",
        "off",
        "--media-tcp-port",
        "0",
        "--media-port",
        &media,
        "--advertise-ip",
        "127.0.0.1",
    ];
    let (ok, out) = doctor(&[&base[..], &["--http", &http, "--https", "off"]].concat());
    assert!(ok, "{out}");
    assert!(out.contains("0 error(s)"), "{out}");

    let (ok, out) = doctor(&[&base[..], &["--http", &taken_at, "--https", "off"]].concat());
    assert!(!ok, "{out}");
    assert!(
        out.contains("taken by another program") && out.contains("fix:"),
        "{out}"
    );

    let (ok, out) = doctor(
        &[
            &base[..],
            &[
                "--http",
                &http,
                "--https",
                "off",
                "--web-root",
                "/nonexistent/jitsi",
            ],
        ]
        .concat(),
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("ERROR web: /nonexistent/jitsi/index.html"),
        "{out}"
    );

    // A chain of the server certificate alone, for public_url's host.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(vec![]).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Doctor Test CA");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut lp = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    lp.distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let leaf = lp.signed_by(&leaf_key, &issuer).unwrap();
    std::fs::write(d.join("leaf.pem"), leaf.pem()).unwrap();
    std::fs::write(d.join("leaf.key"), leaf_key.serialize_pem()).unwrap();
    let conf = d.join("tls.toml");
    std::fs::write(
        &conf,
        format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n[server]\npublic_url = \"https://localhost\"\n",
            d.join("leaf.pem").display(),
            d.join("leaf.key").display()
        ),
    )
    .unwrap();
    let https = format!("127.0.0.1:{}", free_port());
    let (ok, out) = doctor(
        &[
            &base[..],
            &[
                "--http",
                &http,
                "--https",
                &https,
                "--config",
                conf.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("ERROR tls:") && out.contains("incomplete"),
        "{out}"
    );
    assert!(out.contains("days to expiry"), "{out}");
    drop(taken);
}

/// `meetd doctor` against a running meetd: a STUN round trip through each announced media
/// address; an address that is not this host's and does not answer is an error.
#[test]
fn doctor_checks_the_media_path_of_a_running_meetd() {
    let d = tmpdir("doctor-running");
    let dir = d.to_str().unwrap().to_string();
    let http = format!("127.0.0.1:{}", free_port());
    let media = free_port().to_string();
    let flags = [
        "--data-dir",
        &dir,
        "--http",
        &http,
        "--https",
        "off",
        "--c2s",
        "off",
        "--component",
        "off",
        "--media-tcp-port",
        "0",
        "--turn-port",
        "0",
        "--media-port",
        &media,
        "--advertise-ip",
        "127.0.0.1",
    ];
    let mut c = meetd()
        .arg("serve")
        .args(flags)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut up = false;
    for _ in 0..100 {
        if std::net::TcpStream::connect(&http).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(up);
    let (ok, out) = doctor(&flags);
    let (wrong_ok, wrong) = doctor(&[&flags[..], &["--advertise-ip", "203.0.113.77"]].concat());
    let _ = c.kill();
    let _ = c.wait();
    assert!(ok, "{out}");
    assert!(
        out.contains("meetd listens") && out.contains("STUN round trip to 127.0.0.1:"),
        "{out}"
    );
    assert!(!wrong_ok, "{wrong}");
    assert!(
        wrong.contains("203.0.113.77 is not an address of this host")
            && wrong.contains("ERROR media: no STUN answer from 203.0.113.77"),
        "{wrong}"
    );
}
