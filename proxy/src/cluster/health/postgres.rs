//! The Postgres health probe: a startup handshake, then with credentials a recovery/lag query.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::model::PostgresHealthCheck;

const PROTOCOL_3_0: i32 = 196_608;

/// Whether a Postgres server at `addr` accepts sessions. Without credentials, a server that
/// asks for authentication (or refuses it) is up; one starting up, shutting down, out of
/// connection slots or silent is down. With credentials, it also logs in and checks recovery
/// and lag as configured.
pub async fn probe(addr: SocketAddr, spec: &PostgresHealthCheck) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream
        .write_all(&startup_message(&spec.user, &spec.database))
        .await
        .map_err(|e| e.to_string())?;
    let mut kind = [0u8; 1];
    stream
        .read_exact(&mut kind)
        .await
        .map_err(|e| format!("no answer to startup: {e}"))?;
    let mut body = Vec::new();
    if kind[0] == b'E' {
        let mut len = [0u8; 4];
        stream
            .read_exact(&mut len)
            .await
            .map_err(|e| e.to_string())?;
        let len = usize::try_from(i32::from_be_bytes(len))
            .unwrap_or(4)
            .clamp(4, 65_536);
        body.resize(len - 4, 0);
        stream
            .read_exact(&mut body)
            .await
            .map_err(|e| e.to_string())?;
    }
    startup_answer(kind[0], &body)?;
    close_politely(stream).await;
    if spec.has_credentials() {
        query_check(addr, spec).await?;
    }
    Ok(())
}

/// Ends a probe session so that the server logs nothing: end of input first (a client that
/// leaves during authentication, or idle after it, is not an error to Postgres), then what it
/// still sends (the rest of a login, after trust authentication) read until it closes.
/// Dropping the socket with that unread would reset the connection, and the server would log
/// "could not receive data from client" for every check.
async fn close_politely(mut stream: TcpStream) {
    /// At most this much is read, for at most this long: the verdict is already in.
    const DRAIN_BYTES: usize = 64 * 1024;
    const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);
    if stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut read = 0;
        while read < DRAIN_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
}

pub(crate) fn startup_message(user: &str, database: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
    for (k, v) in [
        ("user", user),
        ("database", database),
        ("application_name", "legate-health-check"),
    ] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = Vec::with_capacity(body.len() + 4);
    msg.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    msg.extend_from_slice(&body);
    msg
}

/// Whether a server's first answer to a startup (its message type, and the body of an
/// ErrorResponse) says it accepts sessions.
pub fn startup_answer(kind: u8, body: &[u8]) -> Result<(), String> {
    match kind {
        // An authentication request, or a protocol version negotiation: up.
        b'R' | b'v' => Ok(()),
        b'E' => {
            let (code, message) = error_fields(body);
            if code.is_empty() {
                return Err("an ErrorResponse without a SQLSTATE".to_owned());
            }
            // Not accepting sessions: starting up, shutting down, in recovery without hot
            // standby (57P03), administrator shutdown (57P01), or no connection slots (53300).
            if matches!(code.as_str(), "57P03" | "57P01" | "53300" | "53000") {
                return Err(format!("{code}: {message}"));
            }
            // Anything else (bad password, unknown role or database, no pg_hba entry) means
            // the server is up and answering.
            Ok(())
        }
        other => Err(format!("unexpected answer {other:?} to startup")),
    }
}

/// The SQLSTATE code and message of an ErrorResponse body.
pub fn error_fields(body: &[u8]) -> (String, String) {
    let mut code = String::new();
    let mut message = String::new();
    for field in body.split(|b| *b == 0) {
        match field.split_first() {
            Some((b'C', v)) => code = String::from_utf8_lossy(v).into_owned(),
            Some((b'M', v)) => message = String::from_utf8_lossy(v).into_owned(),
            _ => {}
        }
    }
    (code, message)
}

async fn query_check(addr: SocketAddr, spec: &PostgresHealthCheck) -> Result<(), String> {
    let password = match (&spec.password, &spec.password_file) {
        (Some(p), _) => p.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read password_file {file}: {e}"))?
            .trim_end_matches(['\n', '\r'])
            .to_owned(),
        (None, None) => String::new(),
    };
    let mut config = tokio_postgres::Config::new();
    config
        .hostaddr(addr.ip())
        .port(addr.port())
        .user(&spec.user)
        .password(password)
        .dbname(&spec.database)
        .application_name("legate-health-check");
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("login failed: {e}"))?;
    let driver = tokio::spawn(connection);
    // Lag is zero when everything received has been replayed: an idle primary writes
    // nothing, and its replicas are then current however old the last transaction is.
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), \
             CASE WHEN NOT pg_is_in_recovery() \
                    OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
                  ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0) \
             END::float8",
            &[],
        )
        .await
        .map_err(|e| format!("health query failed: {e}"));
    driver.abort();
    let row = row?;
    let in_recovery: bool = row.try_get(0).map_err(|e| e.to_string())?;
    let lag: f64 = row.try_get(1).map_err(|e| e.to_string())?;
    if spec.require_replica && !in_recovery {
        return Err("not a replica (the server is not in recovery)".to_owned());
    }
    if let Some(max) = spec.max_lag {
        if lag > max.get().as_secs_f64() {
            return Err(format!("replication lag {lag:.1}s exceeds max_lag {max}"));
        }
    }
    Ok(())
}
