//! Persistent state in SQLite (sqlx): accounts and server secrets. Migrations run on open.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use meetd_xmpp::sasl::{ScramCredentials, StoredCredentials};
use meetd_xmpp::server::{AccountStore, BoxFuture};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

#[derive(Clone)]
pub struct Storage {
    pool: SqlitePool,
}

impl Storage {
    pub async fn open(path: &Path) -> Result<Storage, StorageError> {
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Storage { pool })
    }

    /// The dial-in PIN of `room` (a room JID, lower case), made on first use: `digits`
    /// digits, not starting with 0, unique. `pin` makes candidates (random in production).
    pub async fn dialin_pin(
        &self,
        room: &str,
        mut pin: impl FnMut() -> u64,
    ) -> Result<u64, StorageError> {
        if let Some(row) = sqlx::query("SELECT pin FROM dialin_pins WHERE room = ?")
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
                "INSERT OR IGNORE INTO dialin_pins (room, pin, created_at) VALUES (?, ?, ?)",
            )
            .bind(room)
            .bind(pin() as i64)
            .bind(now)
            .execute(&self.pool)
            .await?;
            if let Some(row) = sqlx::query("SELECT pin FROM dialin_pins WHERE room = ?")
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
        Ok(sqlx::query("SELECT room FROM dialin_pins WHERE pin = ?")
            .bind(pin)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.get::<String, _>(0)))
    }

    /// A random secret created once and kept (e.g. for SCRAM's fake salts).
    pub async fn secret(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        if let Some(row) = sqlx::query("SELECT value FROM settings WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?
        {
            return Ok(row.get::<Vec<u8>, _>(0));
        }
        let v: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
        sqlx::query("INSERT OR IGNORE INTO settings (key, value) VALUES (?, ?)")
            .bind(key)
            .bind(&v)
            .execute(&self.pool)
            .await?;
        let row = sqlx::query("SELECT value FROM settings WHERE key = ?")
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
                "INSERT OR IGNORE INTO accounts (iterations, salt_sha1, stored_sha1, server_sha1, \
                 salt_sha256, stored_sha256, server_sha256, username, domain, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
        } else {
            sqlx::query(
                "UPDATE accounts SET iterations = ?, salt_sha1 = ?, stored_sha1 = ?, server_sha1 = ?, \
                 salt_sha256 = ?, stored_sha256 = ?, server_sha256 = ? WHERE username = ? AND domain = ?",
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
        let r = sqlx::query("DELETE FROM accounts WHERE username = ? AND domain = ?")
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
            "SELECT created_at, iterations FROM accounts WHERE username = ? AND domain = ?",
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
        let row = sqlx::query("SELECT iterations, salt_sha1, stored_sha1, server_sha1, salt_sha256, stored_sha256, server_sha256 FROM accounts WHERE username = ? AND domain = ?")
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
