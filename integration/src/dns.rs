//! A name server on 127.0.0.1 (UDP) whose answers a test sets: addresses per name, or a
//! failure (SERVFAIL) for every query. Names it was not told of get NXDOMAIN.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

#[derive(Default)]
struct Answers {
    names: HashMap<String, Vec<IpAddr>>,
    failing: bool,
    silent: bool,
    queries: usize,
}

/// The name server; it stops when dropped.
pub struct NameServer {
    addr: SocketAddr,
    answers: Arc<Mutex<Answers>>,
    task: JoinHandle<()>,
}

impl NameServer {
    pub async fn start() -> Result<NameServer> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let addr = socket.local_addr()?;
        let answers = Arc::new(Mutex::new(Answers::default()));
        let task = tokio::spawn(serve(socket, answers.clone()));
        Ok(NameServer {
            addr,
            answers,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on `name` has exactly `addresses`, and queries are answered again.
    pub fn answer(&self, name: &str, addresses: &[IpAddr]) {
        let mut answers = self.lock();
        answers.failing = false;
        answers.silent = false;
        answers
            .names
            .insert(name.trim_end_matches('.').to_owned(), addresses.to_vec());
    }

    /// From now on every query gets SERVFAIL, until the next `answer`.
    pub fn fail(&self) {
        self.lock().failing = true;
    }

    /// From now on queries are read and never answered, until the next `answer`.
    pub fn silence(&self) {
        self.lock().silent = true;
    }

    /// Queries received so far.
    pub fn queries(&self) -> usize {
        self.lock().queries
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Answers> {
        self.answers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(socket: UdpSocket, answers: Arc<Mutex<Answers>>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            return;
        };
        let Ok(query) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let reply = {
            let mut answers = answers.lock().unwrap_or_else(|e| e.into_inner());
            answers.queries += 1;
            if answers.silent {
                continue;
            }
            respond(&query, &answers)
        };
        if let Ok(bytes) = reply.to_vec() {
            let _ = socket.send_to(&bytes, from).await;
        }
    }
}

fn respond(query: &Message, answers: &Answers) -> Message {
    let mut reply = Message::new(
        query.metadata.id,
        MessageType::Response,
        query.metadata.op_code,
    );
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.authoritative = true;
    reply.add_queries(query.queries.iter().cloned());
    if answers.failing {
        reply.metadata.response_code = ResponseCode::ServFail;
        return reply;
    }
    for q in &query.queries {
        let name = q.name().to_ascii();
        let Some(addresses) = answers.names.get(name.trim_end_matches('.')) else {
            reply.metadata.response_code = ResponseCode::NXDomain;
            continue;
        };
        for ip in addresses {
            let rdata = match (ip, q.query_type()) {
                (IpAddr::V4(v4), RecordType::A) => RData::from(*v4),
                (IpAddr::V6(v6), RecordType::AAAA) => RData::from(*v6),
                _ => continue,
            };
            // A long TTL: Legate must ask again at each refresh all the same.
            reply.add_answer(Record::from_rdata(q.name().clone(), 300, rdata));
        }
    }
    reply
}
