//! HTTP/1.1 over a bare socket, for the tests an HTTP client cannot write: a client that stalls
//! mid-request, holds a connection idle, or is cut off by the server.

use serde_json::Value;
use std::time::Duration;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// One connection to the server at `url`'s host and port.
pub struct RawConnection {
    socket: TcpStream,
}

/// What the server did with a request.
#[derive(Debug)]
pub enum Outcome {
    /// It answered: status, the head's lines, and the JSON body.
    Answered {
        status: u16,
        head: String,
        body: Value,
    },
    /// It closed the connection without an answer.
    Closed,
}

/// The head of `POST <url>` with a bearer token and a JSON body of `length` bytes.
pub fn post_head(url: &str, token: &str, length: usize) -> String {
    let path = url::Url::parse(url).expect("a URL").path().to_owned();
    format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
}

impl RawConnection {
    pub async fn open(url: &str) -> RawConnection {
        let url = url::Url::parse(url).expect("a URL");
        let host = url.host_str().expect("a host");
        let port = url.port_or_known_default().expect("a port");
        let socket = TcpStream::connect((host, port)).await.expect("connected");
        RawConnection { socket }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.socket.write_all(bytes).await.expect("sent");
    }

    /// Reads until a whole answer has come or the server closed the connection; panics if
    /// neither happens within `patience`.
    pub async fn outcome(&mut self, patience: Duration) -> Outcome {
        let mut received = Vec::new();
        let mut chunk = [0_u8; 4096];
        loop {
            let read = tokio::time::timeout(patience, self.socket.read(&mut chunk))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "neither an answer nor a close within {patience:?}: {:?}",
                        String::from_utf8_lossy(&received)
                    )
                });
            match read {
                // A reset is the server closing too.
                Ok(0) | Err(_) if received.is_empty() => return Outcome::Closed,
                Ok(0) | Err(_) => panic!(
                    "closed mid-answer: {:?}",
                    String::from_utf8_lossy(&received)
                ),
                Ok(read) => received.extend_from_slice(&chunk[..read]),
            }
            if let Some(outcome) = whole_answer(&received) {
                return outcome;
            }
        }
    }
}

/// The answer in `received`, once all of it (head and `Content-Length` bytes of body) is there.
fn whole_answer(received: &[u8]) -> Option<Outcome> {
    let text = String::from_utf8_lossy(received);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let line = line.to_ascii_lowercase();
            let value = line.strip_prefix("content-length:")?;
            value.trim().parse().ok()
        })
        .expect("answers carry a content-length");
    if body.len() < length {
        return None;
    }
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .expect("a status line");
    let body = serde_json::from_str(&body[..length]).expect("a JSON body");
    Some(Outcome::Answered {
        status,
        head: head.to_owned(),
        body,
    })
}
