//! A TCP relay whose target can be switched, standing in for an endpoint name that a failover
//! moves (an ElastiCache primary endpoint): connections made before the switch keep going to the
//! old node, new ones reach the new node.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct Relay {
    pub port: u16,
    target: Arc<Mutex<SocketAddr>>,
    task: JoinHandle<()>,
}

impl Relay {
    pub async fn start(target_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let port = listener.local_addr().expect("relay addr").port();
        let target = Arc::new(Mutex::new(SocketAddr::from(([127, 0, 0, 1], target_port))));
        let t = target.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let to = *t.lock().unwrap_or_else(|p| p.into_inner());
                tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self { port, target, task }
    }

    /// New connections go to `port` from now on.
    pub fn switch(&self, port: u16) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) =
            SocketAddr::from(([127, 0, 0, 1], port));
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
