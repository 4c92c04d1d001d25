//! The connection a make-service is called with, and what axum's services
//! and connect-info types need to accept it.
//!
//! axum's own `IncomingStream` cannot be built outside axum, so [`serve`]
//! has its own; the implementations below are those axum has for its type,
//! so that `serve(listener, router)`,
//! `serve(listener, router.into_make_service())` and
//! `serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())`
//! all work as they do with `axum::serve`.
//!
//! [`serve`]: super::serve

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::net::SocketAddr;
use std::task::{Context, Poll};

use axum::extract::connect_info::Connected;
use axum::handler::HandlerService;
use axum::routing::MethodRouter;
use axum::serve::{Listener, TapIo};
use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tower_service::Service;

/// A connection just accepted by [`serve`](super::serve), before any byte
/// of it is read: what a make-service is called with, as `axum::serve`
/// calls it with its own `axum::serve::IncomingStream`.
///
/// To give handlers your own connection information, implement
/// `Connected<IncomingStream<'_, L>>` for your type and serve
/// `router.into_make_service_with_connect_info::<YourType>()`:
///
/// ```
/// use axum::extract::connect_info::Connected;
/// use epilogue::axum::IncomingStream;
/// use tokio::net::TcpListener;
///
/// #[derive(Clone)]
/// struct PeerPort(u16);
///
/// impl Connected<IncomingStream<'_, TcpListener>> for PeerPort {
///     fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
///         PeerPort(stream.remote_addr().port())
///     }
/// }
/// ```
#[derive(Debug)]
pub struct IncomingStream<'a, L>
where
    L: Listener,
{
    pub(super) io: &'a L::Io,
    pub(super) remote_addr: L::Addr,
}

impl<L> IncomingStream<'_, L>
where
    L: Listener,
{
    /// The connection's IO object (a `TcpStream` for a `TcpListener`).
    pub fn io(&self) -> &L::Io {
        self.io
    }

    /// The address of the peer.
    pub fn remote_addr(&self) -> &L::Addr {
        &self.remote_addr
    }
}

/// A make-service that gives every connection `$service` (a copy of the
/// value itself, made ready for requests): what axum's own `serve` does for
/// the same types.
macro_rules! per_connection {
    ([$($param:ident),*] $ty:ty $(where $($bound:ident: Clone),*)?, |$this:ident| $service:expr) => {
        impl<$($param,)* L: Listener> Service<IncomingStream<'_, L>> for $ty
        $(where $($bound: Clone),*)?
        {
            type Response = Self;
            type Error = Infallible;
            type Future = Ready<Result<Self, Infallible>>;

            fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, _stream: IncomingStream<'_, L>) -> Self::Future {
                let $this = self;
                ready(Ok($service))
            }
        }
    };
}

// For `serve(listener, router)`. `with_state` turns every route into a
// `Route` once per connection, rather than once per request, as axum does.
per_connection!([] Router<()>, |router| router.clone().with_state(()));
// For `serve(listener, get(handler))`.
per_connection!([] MethodRouter<()>, |method_router| method_router.clone().with_state(()));
// For `serve(listener, handler.into_service())` and `handler.with_state(..)`.
per_connection!([H, T, S] HandlerService<H, T, S> where H: Clone, S: Clone, |handler| handler.clone());

// `ConnectInfo<SocketAddr>` over TCP.
impl Connected<IncomingStream<'_, TcpListener>> for SocketAddr {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        stream.remote_addr
    }
}

// And over a TCP listener with `tap_io` (`TCP_NODELAY`, say).
impl<F> Connected<IncomingStream<'_, TapIo<TcpListener, F>>> for SocketAddr
where
    F: FnMut(&mut TcpStream) + Send + 'static,
{
    fn connect_info(stream: IncomingStream<'_, TapIo<TcpListener, F>>) -> Self {
        stream.remote_addr
    }
}

// `ConnectInfo<tokio::net::unix::SocketAddr>` over a Unix socket.
#[cfg(unix)]
impl Connected<IncomingStream<'_, tokio::net::UnixListener>> for tokio::net::unix::SocketAddr {
    fn connect_info(stream: IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        stream.remote_addr
    }
}
