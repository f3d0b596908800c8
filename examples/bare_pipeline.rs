//! The bench's reference row (issue 19): the bare pipeline, the fastest straightforward ingester
//! of the same mail, against which mailintake's throughput is measured. Built and run only by
//! `scripts/bench.sh` (`cargo build --release --example bare_pipeline`); not part of mailintake.
//!
//! ```text
//! bare_pipeline --host localhost --port 14993 --ca CA.pem --user ADDRESS --password PW \
//!               --db sqlite:///path/bare.db | postgres://... [--batch 200] [--max-bytes N]
//! ```
//!
//! What it does, and nothing more: implicit TLS, LOGIN, SELECT INBOX, one `UID FETCH 1:*
//! (RFC822.SIZE)` listing, then per 200 UIDs at or under `--max-bytes` one `UID FETCH
//! BODY.PEEK[]`, mail-parser on each body, and one multi-row INSERT of (Message-ID, subject, From,
//! text body, raw) per batch in one transaction. The same durability as mailintake (SQLite: WAL,
//! `synchronous = FULL`; PostgreSQL: its defaults), no dispositions, no ledger, no tickets, no
//! attachments, no deduplication beyond the primary key. Prints one JSON line.

use std::time::Instant;

use futures::TryStreamExt;
use mail_parser::MessageParser;
use sqlx::{Connection, QueryBuilder};

struct Args {
    host: String,
    port: u16,
    ca: String,
    user: String,
    password: String,
    db: String,
    batch: usize,
    max_bytes: u64,
}

fn args() -> Result<Args, String> {
    let mut map = std::collections::HashMap::new();
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        let Some(name) = flag.strip_prefix("--") else {
            return Err(format!("unexpected argument {flag}"));
        };
        let value = argv.next().ok_or(format!("--{name} needs a value"))?;
        map.insert(name.to_string(), value);
    }
    let mut take = |name: &str| map.remove(name).ok_or(format!("--{name} is required"));
    let parsed = Args {
        host: take("host")?,
        port: take("port")?.parse().map_err(|e| format!("--port: {e}"))?,
        ca: take("ca")?,
        user: take("user")?,
        password: take("password")?,
        db: take("db")?,
        batch: take("batch")
            .unwrap_or_else(|_| "200".into())
            .parse()
            .map_err(|e| format!("--batch: {e}"))?,
        max_bytes: take("max-bytes")
            .unwrap_or_else(|_| "26214400".into())
            .parse()
            .map_err(|e| format!("--max-bytes: {e}"))?,
    };
    match map.keys().next() {
        Some(unknown) => Err(format!("unknown option --{unknown}")),
        None => Ok(parsed),
    }
}

/// One parsed message, as the row stores it.
struct Row {
    uid: u32,
    message_id: String,
    subject: Option<String>,
    from: Option<String>,
    body_text: Option<String>,
    raw: Vec<u8>,
}

fn parse(uid: u32, raw: Vec<u8>) -> Row {
    let parser = MessageParser::default();
    let (message_id, subject, from, body_text) = match parser.parse(&raw) {
        Some(m) => (
            m.message_id().map(str::to_string),
            m.subject().map(str::to_string),
            m.from()
                .and_then(|a| a.first())
                .and_then(|a| a.address())
                .map(str::to_string),
            m.body_text(0).map(|t| t.replace('\0', "")),
        ),
        None => (None, None, None, None),
    };
    Row {
        uid,
        message_id: message_id.unwrap_or_else(|| format!("uid-{uid}@bare.invalid")),
        subject: subject.map(|s| s.replace('\0', "")),
        from,
        body_text,
        raw,
    }
}

const SCHEMA_SQLITE: &str = "CREATE TABLE IF NOT EXISTS bare_messages (uid BIGINT PRIMARY KEY, \
    message_id TEXT NOT NULL, subject TEXT, from_address TEXT, body_text TEXT, raw BLOB NOT NULL)";
const SCHEMA_POSTGRES: &str = "CREATE TABLE IF NOT EXISTS bare_messages (uid BIGINT PRIMARY KEY, \
    message_id TEXT NOT NULL, subject TEXT, from_address TEXT, body_text TEXT, raw BYTEA NOT NULL)";

enum Db {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

async fn open(url: &str) -> Result<Db, sqlx::Error> {
    if url.starts_with("sqlite:") {
        use std::str::FromStr;
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Full);
        let mut conn = sqlx::SqliteConnection::connect_with(&options).await?;
        sqlx::query(SCHEMA_SQLITE).execute(&mut conn).await?;
        Ok(Db::Sqlite(conn))
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await?;
        sqlx::query(SCHEMA_POSTGRES).execute(&mut conn).await?;
        Ok(Db::Postgres(conn))
    }
}

const INSERT: &str =
    "INSERT INTO bare_messages (uid, message_id, subject, from_address, body_text, raw) ";

async fn write(db: &mut Db, rows: &[Row]) -> Result<(), sqlx::Error> {
    macro_rules! insert {
        ($conn:expr, $db:ty) => {{
            let mut tx = $conn.begin().await?;
            let mut query = QueryBuilder::<$db>::new(INSERT);
            query.push_values(rows, |mut b, r| {
                b.push_bind(i64::from(r.uid))
                    .push_bind(&r.message_id)
                    .push_bind(&r.subject)
                    .push_bind(&r.from)
                    .push_bind(&r.body_text)
                    .push_bind(&r.raw);
            });
            query.build().execute(&mut *tx).await?;
            tx.commit().await
        }};
    }
    match db {
        Db::Sqlite(conn) => insert!(conn, sqlx::Sqlite),
        Db::Postgres(conn) => insert!(conn, sqlx::Postgres),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args().map_err(|e| format!("bare_pipeline: {e}"))?;
    let started = Instant::now();
    let ca = native_tls::Certificate::from_pem(&std::fs::read(&args.ca)?)?;
    let tcp = tokio::net::TcpStream::connect((args.host.as_str(), args.port)).await?;
    let tls = async_native_tls::TlsConnector::new()
        .add_root_certificate(ca)
        .connect(args.host.as_str(), tcp)
        .await?;
    let mut client = async_imap::Client::new(tls);
    client.read_response().await?.ok_or("no greeting")?;
    let mut session = client
        .login(&args.user, &args.password)
        .await
        .map_err(|(e, _)| e)?;
    session.select("INBOX").await?;
    let mut db = open(&args.db).await?;

    let listing: Vec<(u32, u64)> = session
        .uid_fetch("1:*", "(UID RFC822.SIZE)")
        .await?
        .try_filter_map(
            |f| async move { Ok(f.uid.map(|uid| (uid, u64::from(f.size.unwrap_or(0))))) },
        )
        .try_collect()
        .await?;
    let (wanted, oversized): (Vec<_>, Vec<_>) = listing
        .into_iter()
        .partition(|&(_, size)| size <= args.max_bytes);

    let (mut n, mut bytes) = (0usize, 0u64);
    for chunk in wanted.chunks(args.batch.max(1)) {
        let set = chunk
            .iter()
            .map(|(uid, _)| uid.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let fetched: Vec<(u32, Vec<u8>)> = session
            .uid_fetch(&set, "(UID BODY.PEEK[])")
            .await?
            .try_filter_map(|f| async move { Ok(f.uid.zip(f.body().map(<[u8]>::to_vec))) })
            .try_collect()
            .await?;
        bytes += fetched.iter().map(|(_, raw)| raw.len() as u64).sum::<u64>();
        let rows: Vec<Row> = fetched
            .into_iter()
            .map(|(uid, raw)| parse(uid, raw))
            .collect();
        n += rows.len();
        write(&mut db, &rows).await?;
    }
    session.logout().await?;
    println!(
        "{{\"messages\": {n}, \"bytes\": {bytes}, \"oversized\": {}, \"seconds\": {:.3}}}",
        oversized.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
