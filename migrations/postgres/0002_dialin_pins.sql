-- Dial-in: one stable numeric PIN per room, which maps back to the room (docs/dialin.md).
CREATE TABLE dialin_pins (
    room       TEXT   PRIMARY KEY NOT NULL,
    pin        BIGINT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
