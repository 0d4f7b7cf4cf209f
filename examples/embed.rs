//! Embedding binderd: run it inside another program with a binding declared
//! in code, on a port the OS picks, and stop it with a channel.
//!
//! `cargo run --example embed -- "python3 -m http.server {port} --bind 127.0.0.1"`
//! then follow the printed curl commands; Ctrl-C (or Enter) to stop.

use binderd::binding::Binding;
use binderd::config::Config;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let command = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "python3 -m http.server {port} --bind 127.0.0.1".into());
    let binding: Binding = serde_json::from_value(serde_json::json!({
        "name": "embedded",
        "command": command.split_whitespace().collect::<Vec<_>>(),
        "strip_prefix": true,
        "public": true,
        "pool": {"min": 2, "max": 4},
    }))?;
    let mut config = Config::new(std::env::temp_dir().join("binderd-embed"));
    config.listen = "127.0.0.1:0".parse()?;
    config.cleanup_on_exit = true;
    config.bindings = config.check_bindings(vec![binding])?;

    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    println!("binderd on http://{addr}");
    println!("  curl -s http://{addr}/pools/embedded");
    println!("  curl -s -X POST http://{addr}/binders/embedded");
    let stop = async {
        let enter = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        });
        tokio::select! {
            _ = enter => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    binderd::run(config, listener, stop).await?;
    Ok(())
}
