//! Persistent state (sqlx): accounts, server secrets and dial-in PINs, in SQLite (the embedded
//! default, `<data_dir>/meetd.db`) or PostgreSQL (`[database] url`, for several signalling
//! nodes sharing them). One set of queries serves both (sqlx's `Any` driver: `$n` parameters
//! and `ON CONFLICT`, which both understand); the migrations are per database
//! (`migrations/sqlite`, `migrations/postgres`) and run on open.

use std::path::Path;
use std::sync::Arc;

use meetd_xmpp::sasl::{ScramCredentials, StoredCredentials};
use meetd_xmpp::server::{AccountStore, BoxFuture};
use sqlx::AnyPool;
use sqlx::Row;
use sqlx::any::AnyPoolOptions;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

#[derive(Clone)]
pub struct Storage {
    pool: AnyPool,
}

impl Storage {
    /// The SQLite database at `path`, created when missing.
    pub async fn open(path: &Path) -> Result<Storage, StorageError> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .connect(&format!("sqlite://{}?mode=rwc", path.display()))
            .await?;
        // Readers do not wait for the writer (kept in the file once set).
        sqlx::query("PRAGMA journal_mode = WAL")
            .execute(&pool)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Storage { pool })
    }

    /// The PostgreSQL database at `url` (`postgres://user:password@host:port/database`).
    pub async fn connect(url: &str) -> Result<Storage, StorageError> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Storage { pool })
    }

    /// The dial-in PIN of `room` (a room JID, lower case), made on first use: `digits`
    /// digits, not starting with 0, unique. `pin` makes candidates (random in production).
    pub async fn dialin_pin(
        &self,
        room: &str,
        mut pin: impl FnMut() -> u64,
    ) -> Result<u64, StorageError> {
        if let Some(row) = sqlx::query("SELECT pin FROM dialin_pins WHERE room = $1")
            .bind(room)
            .fetch_optional(&self.pool)
            .await?
        {
            return Ok(row.get::<i64, _>(0) as u64);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        // A PIN already taken is retried; a room another request mapped meanwhile wins.
        for _ in 0..16 {
            sqlx::query(
                "INSERT INTO dialin_pins (room, pin, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(room)
            .bind(pin() as i64)
            .bind(now)
            .execute(&self.pool)
            .await?;
            if let Some(row) = sqlx::query("SELECT pin FROM dialin_pins WHERE room = $1")
                .bind(room)
                .fetch_optional(&self.pool)
                .await?
            {
                return Ok(row.get::<i64, _>(0) as u64);
            }
        }
        Err(StorageError::Db(sqlx::Error::RowNotFound))
    }

    /// The room a dial-in PIN belongs to.
    pub async fn dialin_room(&self, pin: u64) -> Result<Option<String>, StorageError> {
        let Ok(pin) = i64::try_from(pin) else {
            return Ok(None);
        };
        Ok(sqlx::query("SELECT room FROM dialin_pins WHERE pin = $1")
            .bind(pin)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.get::<String, _>(0)))
    }

    /// A random secret created once and kept (e.g. for SCRAM's fake salts).
    pub async fn secret(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        if let Some(row) = sqlx::query("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?
        {
            return Ok(row.get::<Vec<u8>, _>(0));
        }
        let v: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
        sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(key)
            .bind(&v)
            .execute(&self.pool)
            .await?;
        let row = sqlx::query("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get::<Vec<u8>, _>(0))
    }

    /// Create an account (`create`) or change its password; false when it did not
    /// (already) exist as expected.
    pub async fn set_account(
        &self,
        user: &str,
        domain: &str,
        c: &StoredCredentials,
        create: bool,
    ) -> Result<bool, StorageError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let q = if create {
            sqlx::query(
                "INSERT INTO accounts (iterations, salt_sha1, stored_sha1, server_sha1, \
                 salt_sha256, stored_sha256, server_sha256, username, domain, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
            )
        } else {
            sqlx::query(
                "UPDATE accounts SET iterations = $1, salt_sha1 = $2, stored_sha1 = $3, server_sha1 = $4, \
                 salt_sha256 = $5, stored_sha256 = $6, server_sha256 = $7 WHERE username = $8 AND domain = $9",
            )
        };
        let q = q
            .bind(c.sha256.iterations as i64)
            .bind(&c.sha1.salt)
            .bind(&c.sha1.stored_key)
            .bind(&c.sha1.server_key)
            .bind(&c.sha256.salt)
            .bind(&c.sha256.stored_key)
            .bind(&c.sha256.server_key)
            .bind(user)
            .bind(domain);
        let q = if create { q.bind(now) } else { q };
        let r = q.execute(&self.pool).await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn remove_account(&self, user: &str, domain: &str) -> Result<bool, StorageError> {
        let r = sqlx::query("DELETE FROM accounts WHERE username = $1 AND domain = $2")
            .bind(user)
            .bind(domain)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// What the database holds about one account, for a data-subject request: its creation
    /// time (Unix seconds) and the PBKDF2 iterations of its SCRAM verifiers.
    pub async fn account_record(
        &self,
        user: &str,
        domain: &str,
    ) -> Result<Option<(i64, i64)>, StorageError> {
        let row = sqlx::query(
            "SELECT created_at, iterations FROM accounts WHERE username = $1 AND domain = $2",
        )
        .bind(user)
        .bind(domain)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| (r.get::<i64, _>(0), r.get::<i64, _>(1))))
    }

    pub async fn list_accounts(&self) -> Result<Vec<String>, StorageError> {
        let rows = sqlx::query("SELECT username, domain FROM accounts ORDER BY domain, username")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| format!("{}@{}", r.get::<String, _>(0), r.get::<String, _>(1)))
            .collect())
    }

    pub async fn credentials(
        &self,
        user: &str,
        domain: &str,
    ) -> Result<Option<StoredCredentials>, StorageError> {
        let row = sqlx::query("SELECT iterations, salt_sha1, stored_sha1, server_sha1, salt_sha256, stored_sha256, server_sha256 FROM accounts WHERE username = $1 AND domain = $2")
            .bind(user)
            .bind(domain)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| {
            let it = r.get::<i64, _>(0).clamp(1, u32::MAX as i64) as u32;
            StoredCredentials {
                sha1: ScramCredentials {
                    iterations: it,
                    salt: r.get(1),
                    stored_key: r.get(2),
                    server_key: r.get(3),
                },
                sha256: ScramCredentials {
                    iterations: it,
                    salt: r.get(4),
                    stored_key: r.get(5),
                    server_key: r.get(6),
                },
            }
        }))
    }
}

/// The XMPP server's view of the account table. Usernames are case-insensitive.
pub struct Accounts(pub Storage);

impl AccountStore for Accounts {
    fn credentials<'a>(
        &'a self,
        user: &'a str,
        domain: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredCredentials>, String>> {
        Box::pin(async move {
            self.0
                .credentials(&user.to_lowercase(), domain)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

pub fn accounts(s: &Storage) -> Arc<dyn AccountStore> {
    Arc::new(Accounts(s.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    fn creds(n: u8) -> StoredCredentials {
        let c = |h: u8| ScramCredentials {
            iterations: 4096,
            salt: vec![n, h, 1],
            stored_key: vec![n, h, 2, 0xff],
            server_key: vec![n, h, 3, 0],
        };
        StoredCredentials {
            sha1: c(1),
            sha256: c(2),
        }
    }

    /// Everything meetd asks of its database, the same for SQLite and PostgreSQL.
    async fn exercise(s: &Storage) {
        assert!(
            s.set_account("alice", "meet.jitsi", &creds(1), true)
                .await
                .unwrap()
        );
        assert!(
            !s.set_account("alice", "meet.jitsi", &creds(2), true)
                .await
                .unwrap(),
            "an account is created once"
        );
        assert_eq!(
            s.credentials("alice", "meet.jitsi").await.unwrap(),
            Some(creds(1))
        );
        assert!(
            s.set_account("alice", "meet.jitsi", &creds(3), false)
                .await
                .unwrap()
        );
        assert_eq!(
            s.credentials("alice", "meet.jitsi").await.unwrap(),
            Some(creds(3))
        );
        assert!(
            !s.set_account("bob", "meet.jitsi", &creds(4), false)
                .await
                .unwrap()
        );
        assert!(
            s.set_account("bob", "meet.jitsi", &creds(4), true)
                .await
                .unwrap()
        );
        assert_eq!(
            s.list_accounts().await.unwrap(),
            ["alice@meet.jitsi", "bob@meet.jitsi"]
        );
        let (created, iterations) = s
            .account_record("bob", "meet.jitsi")
            .await
            .unwrap()
            .unwrap();
        assert!(created > 1_700_000_000 && iterations == 4096);
        assert!(s.remove_account("bob", "meet.jitsi").await.unwrap());
        assert!(!s.remove_account("bob", "meet.jitsi").await.unwrap());
        assert_eq!(s.credentials("bob", "meet.jitsi").await.unwrap(), None);

        let k = s.secret("cookie").await.unwrap();
        assert_eq!(k.len(), 32);
        assert_eq!(s.secret("cookie").await.unwrap(), k, "made once, kept");
        assert_ne!(s.secret("other").await.unwrap(), k);

        // PINs: stable per room, unique, and a taken candidate is skipped.
        let a = s.dialin_pin("a@muc", || 4_000_000_001).await.unwrap();
        assert_eq!(a, 4_000_000_001);
        assert_eq!(s.dialin_pin("a@muc", || 1).await.unwrap(), a);
        let mut tries = [4_000_000_001u64, 4_000_000_002].into_iter();
        let b = s
            .dialin_pin("b@muc", || tries.next().unwrap_or(9))
            .await
            .unwrap();
        assert_eq!(b, 4_000_000_002);
        assert_eq!(s.dialin_room(b).await.unwrap().as_deref(), Some("b@muc"));
        assert_eq!(s.dialin_room(123).await.unwrap(), None);
        assert_eq!(s.dialin_room(u64::MAX).await.unwrap(), None);
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let d = std::env::temp_dir().join(format!(
            "meetd-storage-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[tokio::test]
    async fn sqlite() {
        let d = temp_dir("sqlite");
        let s = Storage::open(&d.join("meetd.db")).await.unwrap();
        exercise(&s).await;
        drop(s);
        // Reopened: the data stayed, the migrations are not run twice.
        let s = Storage::open(&d.join("meetd.db")).await.unwrap();
        assert_eq!(s.list_accounts().await.unwrap(), ["alice@meet.jitsi"]);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A throwaway PostgreSQL cluster from Debian's binaries (`postgresql`): initdb in a
    /// temporary directory, run as the `postgres` user when the tests run as root, on a
    /// loopback port. Stopped and removed on drop.
    struct Postgres {
        child: Child,
        dir: PathBuf,
        url: String,
    }

    impl Drop for Postgres {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn pg_bin(name: &str) -> Option<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        if let Ok(versions) = std::fs::read_dir("/usr/lib/postgresql") {
            let mut v: Vec<PathBuf> = versions.flatten().map(|e| e.path().join("bin")).collect();
            v.sort();
            dirs.extend(v.into_iter().rev());
        }
        dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
    }

    fn start_postgres() -> Option<Postgres> {
        let (initdb, postgres) = (pg_bin("initdb")?, pg_bin("postgres")?);
        let root = running_as_root();
        let dir = temp_dir("postgres");
        let data = dir.join("data");
        // As root: a command run as the postgres user, which owns the directory.
        let cmd = |bin: &Path| {
            if root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(bin);
                c
            } else {
                Command::new(bin)
            }
        };
        if root {
            let ok = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("postgres: no postgres user to run as; skipped");
                return None;
            }
        }
        let init = cmd(&initdb)
            .args(["-A", "trust", "-U", "meetd", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        assert!(init.success(), "initdb failed");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?
            .port();
        let child = cmd(&postgres)
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off", "-k"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("postgres.log")).ok()?)
            .spawn()
            .ok()?;
        Some(Postgres {
            child,
            dir,
            url: format!("postgres://meetd@127.0.0.1:{port}/postgres"),
        })
    }

    fn running_as_root() -> bool {
        // /proc/self/status: "Uid:\t<real>\t<effective>…"
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
            })
            .unwrap_or(false)
    }

    #[tokio::test]
    async fn postgres() {
        let Some(pg) = start_postgres() else {
            eprintln!("postgres: Debian's postgresql is not installed; skipped");
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let s = loop {
            match Storage::connect(&pg.url).await {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => panic!(
                    "PostgreSQL did not start: {e}\n{}",
                    std::fs::read_to_string(pg.dir.join("postgres.log")).unwrap_or_default()
                ),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        exercise(&s).await;
        drop(s);
        let s = Storage::connect(&pg.url).await.unwrap();
        assert_eq!(s.list_accounts().await.unwrap(), ["alice@meet.jitsi"]);
    }
}
