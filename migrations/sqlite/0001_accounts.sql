-- Internal accounts: SCRAM credentials only, never the password.
CREATE TABLE accounts (
    username      TEXT    NOT NULL,
    domain        TEXT    NOT NULL,
    iterations    INTEGER NOT NULL,
    salt_sha1     BLOB    NOT NULL,
    stored_sha1   BLOB    NOT NULL,
    server_sha1   BLOB    NOT NULL,
    salt_sha256   BLOB    NOT NULL,
    stored_sha256 BLOB    NOT NULL,
    server_sha256 BLOB    NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (username, domain)
);

-- Small persistent server secrets and settings.
CREATE TABLE settings (
    key   TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
);
