//! The listeners of a server: gRPC and HTTP, and their admin twins when set; how they serve,
//! and how they stop.
//!
//! Shutdown, in order: health turns NOT_SERVING for every name; after `server.drain_delay`
//! the listeners close and connections get GOAWAY, so new calls are refused; calls in flight
//! get `server.shutdown_grace` to finish, then whatever still runs is stopped.

use std::{future::Future, net::SocketAddr};

use anyhow::Context as _;
use tokio::{net::TcpListener, task::JoinHandle};

use crate::{
    config::Settings,
    grpc::{self, Apis, Health},
    http::{HttpState, Routes},
    tls::Tls,
};

/// The bound listeners, not yet serving.
#[derive(Debug)]
pub struct Listeners {
    grpc: TcpListener,
    grpc_addr: SocketAddr,
    http: TcpListener,
    http_addr: SocketAddr,
    /// `admin_grpc_addr`: the admin services' own listener, when set.
    admin_grpc: Option<TcpListener>,
    /// `admin_http_addr`: `/metrics`' own listener, when set.
    admin_http: Option<TcpListener>,
}

/// What the listeners serve.
#[derive(Debug)]
pub struct Served {
    /// The gRPC services.
    pub apis: Apis,
    /// The health service (turned NOT_SERVING when draining begins).
    pub health: Health,
    /// What the HTTP routes need.
    pub http: HttpState,
    /// Told when draining begins, so that streams end.
    pub draining: tokio::sync::watch::Sender<bool>,
    /// TLS, when the listeners speak it.
    pub tls: Option<Tls>,
}

impl Listeners {
    /// Binds every listener of `settings`.
    pub async fn bind(settings: &Settings) -> anyhow::Result<Self> {
        let grpc = bind(settings.grpc_addr, "grpc_addr").await?;
        let http = bind(settings.http_addr, "http_addr").await?;
        let admin_grpc = match settings.admin_grpc_addr {
            Some(addr) => Some(bind(addr, "admin_grpc_addr").await?),
            None => None,
        };
        let admin_http = match settings.admin_http_addr {
            Some(addr) => Some(bind(addr, "admin_http_addr").await?),
            None => None,
        };
        Ok(Self {
            grpc_addr: grpc.local_addr()?,
            http_addr: http.local_addr()?,
            grpc,
            http,
            admin_grpc,
            admin_http,
        })
    }

    /// The gRPC listener's address (useful with port 0).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The HTTP listener's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The admin gRPC listener's address, when there is one.
    pub fn admin_grpc_addr(&self) -> Option<SocketAddr> {
        self.admin_grpc.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The admin HTTP listener's address, when there is one.
    pub fn admin_http_addr(&self) -> Option<SocketAddr> {
        self.admin_http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then drains (see the module doc). `draining_begins`
    /// runs as health turns NOT_SERVING.
    pub async fn serve(
        self,
        settings: &Settings,
        served: Served,
        shutdown: impl Future<Output = ()> + Send,
        draining_begins: impl FnOnce() + Send,
    ) -> anyhow::Result<()> {
        let Served {
            apis,
            health,
            http,
            draining,
            tls,
        } = served;
        // Every listener but the main gRPC one stops when draining begins, after the delay.
        let drained = || {
            let mut draining = draining.subscribe();
            let delay = settings.server.drain_delay;
            async move {
                let _ = draining.wait_for(|draining| *draining).await;
                tokio::time::sleep(delay).await;
            }
        };
        let mut others: Vec<(&str, JoinHandle<()>)> = Vec::new();
        let http_routes = if self.admin_http.is_some() {
            Routes::Public
        } else {
            Routes::All
        };
        others.push((
            "HTTP",
            tokio::spawn(serve_http(self.http, http_routes, http.clone(), drained())),
        ));
        if let Some(listener) = self.admin_http {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(admin_http_addr = %addr, "Keystone is serving /metrics on {addr}");
            }
            others.push((
                "admin HTTP",
                tokio::spawn(serve_http(listener, Routes::Admin, http, drained())),
            ));
        }
        let grpc_role = if self.admin_grpc.is_some() {
            grpc::Listener::Public
        } else {
            grpc::Listener::All
        };
        if let Some(listener) = self.admin_grpc {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(admin_grpc_addr = %addr, "Keystone is serving the admin APIs on {addr}");
            }
            let (settings, apis, health, stop, tls) = (
                settings.clone(),
                apis.clone(),
                health.clone(),
                drained(),
                tls.clone(),
            );
            others.push((
                "admin gRPC",
                tokio::spawn(async move {
                    let served = grpc::serve(
                        listener,
                        grpc::Listener::Admin,
                        &settings,
                        tls.as_ref(),
                        apis,
                        &health,
                        stop,
                    )
                    .await;
                    if let Err(error) = served {
                        tracing::warn!(
                            error = format!("{error:#}"),
                            "the admin gRPC server failed"
                        );
                    }
                }),
            ));
        }
        tracing::info!(http_addr = %self.http_addr, "Keystone is serving HTTP on {}", self.http_addr);
        tracing::info!(grpc_addr = %self.grpc_addr, "Keystone is serving gRPC on {}", self.grpc_addr);

        let (closed_tx, closed) = tokio::sync::oneshot::channel::<()>();
        let drain_delay = settings.server.drain_delay;
        let signalled = {
            let health = health.clone();
            async move {
                shutdown.await;
                draining_begins();
                health.set(false).await;
                let _ = draining.send(true);
                tracing::info!("health is NOT_SERVING; draining");
                tokio::time::sleep(drain_delay).await;
                // The listener closes as this future returns.
                let _ = closed_tx.send(());
            }
        };
        let grace = settings.server.shutdown_grace;
        let grace_expired = async move {
            match closed.await {
                Ok(()) => tokio::time::sleep(grace).await,
                Err(_) => std::future::pending().await,
            }
        };

        let serve = grpc::serve(
            self.grpc,
            grpc_role,
            settings,
            tls.as_ref(),
            apis,
            &health,
            signalled,
        );
        let served = tokio::select! {
            result = serve => result.context("the gRPC server failed"),
            () = grace_expired => {
                tracing::warn!(
                    grace = %humantime::format_duration(grace),
                    "calls still in flight after the shutdown grace; stopping anyway"
                );
                Ok(())
            }
        };
        // The other listeners stopped taking requests when draining began; those in flight
        // get what is left of one grace, then everything still running is stopped, so that
        // nothing outlives the database pool closed after.
        let deadline = tokio::time::Instant::now() + grace;
        for (name, mut handle) in others {
            if tokio::time::timeout_at(deadline, &mut handle)
                .await
                .is_err()
            {
                tracing::warn!(
                    listener = name,
                    "requests still in flight after the shutdown grace"
                );
                handle.abort();
            }
        }
        served
    }
}

async fn bind(addr: SocketAddr, setting: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {setting} {addr}"))
}

async fn serve_http(
    listener: TcpListener,
    routes: Routes,
    state: HttpState,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    if let Err(error) = crate::http::serve(listener, routes, state, stop).await {
        tracing::warn!(error = %error, "an HTTP server failed");
    }
}
