//! What hyper refuses itself, answered as problem+json like everything
//! else. A request hyper cannot parse (a control byte in a header, a
//! request target or headers past its buffer, an unknown HTTP version)
//! never reaches the stack: hyper answers it with a bare status, no body
//! and `connection: close`, and has no hook to change that. The stack
//! never answers a 400, 414 or 431 without a body, so such an answer on
//! its way out can only be hyper's: it is replaced by the same status
//! with a problem body, before any byte of it is sent.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::EdgeError;

/// A whole HTTP/1.1 answer for `error`, closing the connection: for
/// connections answered outside hyper (past the connection limit) and in
/// place of hyper's own refusals.
pub(crate) fn raw_answer(error: &EdgeError) -> Vec<u8> {
    let problem = error.problem();
    let status = problem.status;
    let body = problem.body().to_string();
    let retry = if status == axum::http::StatusCode::SERVICE_UNAVAILABLE { "retry-after: 1\r\n" } else { "" };
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\n{retry}connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default(),
        crate::problem::PROBLEM_JSON,
        body.len()
    )
    .into_bytes()
}

/// The problem for one of hyper's own bare refusals (`head`, as hyper
/// writes it: a status line, `connection: close`, `content-length: 0`,
/// `date`, and nothing else), if `head` is one.
fn hypers_refusal(head: &[u8]) -> Option<EdgeError> {
    // Most writes are answers of ours: told apart by their first bytes.
    if !head.starts_with(b"HTTP/1.1 4") || head.len() > 512 {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let rest = text.strip_prefix("HTTP/1.1 ")?;
    let bare = text.ends_with("\r\n\r\n")
        && text.contains("\r\nconnection: close\r\n")
        && text.contains("\r\ncontent-length: 0\r\n")
        && !text.contains("content-type");
    if !bare {
        return None;
    }
    match rest.get(..4)? {
        "400 " => Some(EdgeError::malformed(
            "request",
            "not a valid HTTP/1.1 request (a control character in a header, a malformed request line or an unknown version)",
        )),
        "414 " => Some(EdgeError::UriTooLong),
        "431 " => Some(EdgeError::HeadersTooLarge),
        _ => None,
    }
}

/// A connection whose bare refusals from hyper go out as problem+json.
pub(crate) struct Refusals<T> {
    inner: T,
    /// The answer written in place of hyper's, and how much of it is out.
    replacing: Option<(Vec<u8>, usize)>,
}

impl<T> Refusals<T> {
    pub(crate) fn new(inner: T) -> Self {
        Refusals { inner, replacing: None }
    }
}

impl<T: AsyncWrite + Unpin> Refusals<T> {
    /// Writes what is left of the replacement.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((answer, sent)) = &mut self.replacing {
            if *sent == answer.len() {
                self.replacing = None;
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &answer[*sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Refusals<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Refusals<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.replacing.is_none()
            && let Some(error) = hypers_refusal(buf)
        {
            self.replacing = Some((raw_answer(&error), 0));
        }
        if self.replacing.is_some() {
            // Hyper's bytes are taken whole once the replacement is out.
            return self.drain(cx).map_ok(|()| buf.len());
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        // A refusal is one buffer (a head and no body).
        let mut full = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (full.next(), full.next())
            && (self.replacing.is_some() || hypers_refusal(only).is_some())
        {
            return self.poll_write(cx, only);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_bare_refusals_are_recognised() {
        let hyper = |status: &str| {
            format!("HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: 0\r\ndate: Thu, 03 Dec 2026 20:14:31 GMT\r\n\r\n")
        };
        assert!(matches!(hypers_refusal(hyper("400 Bad Request").as_bytes()), Some(EdgeError::Malformed(_))));
        assert!(matches!(hypers_refusal(hyper("414 URI Too Long").as_bytes()), Some(EdgeError::UriTooLong)));
        assert!(matches!(hypers_refusal(hyper("431 Request Header Fields Too Large").as_bytes()), Some(EdgeError::HeadersTooLarge)));
        assert!(hypers_refusal(hyper("404 Not Found").as_bytes()).is_none());
        let ours = "HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        assert!(hypers_refusal(ours.as_bytes()).is_none(), "an answer with a type is the stack's");
        let with_body = "HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n{\"a\":\"b\"}   ";
        assert!(hypers_refusal(with_body.as_bytes()).is_none());
    }
}
