-- Internal accounts: SCRAM credentials only, never the password.
CREATE TABLE accounts (
    username      TEXT   NOT NULL,
    domain        TEXT   NOT NULL,
    iterations    BIGINT NOT NULL,
    salt_sha1     BYTEA  NOT NULL,
    stored_sha1   BYTEA  NOT NULL,
    server_sha1   BYTEA  NOT NULL,
    salt_sha256   BYTEA  NOT NULL,
    stored_sha256 BYTEA  NOT NULL,
    server_sha256 BYTEA  NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (username, domain)
);

-- Small persistent server secrets and settings.
CREATE TABLE settings (
    key   TEXT PRIMARY KEY NOT NULL,
    value BYTEA NOT NULL
);
