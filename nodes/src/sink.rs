//! `lethe sink`: listens, decodes Nym frames, appends one line per packet to a file:
//! `<unix time in ms> <frame version> <packet as hex>`. A test helper, and a stand-in for a
//! gateway at the end of a chain.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use lethe_crypto::framing::{FrameDecoder, FramingVersion};

use crate::keyfile::hex;

pub fn run(listen: SocketAddr, out: PathBuf) -> Result<(), String> {
    let listener = TcpListener::bind(listen).map_err(|e| format!("{listen}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    let file = Arc::new(Mutex::new(file));
    println!("listen={local}");
    let _ = std::io::stdout().flush();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let file = file.clone();
        std::thread::spawn(move || record(stream, &file));
    }
    Ok(())
}

fn record(mut stream: TcpStream, file: &Mutex<std::fs::File>) {
    let mut decoder = FrameDecoder::new();
    let mut buffer = vec![0u8; crate::limits::SINK_READ_BUFFER_BYTES];
    loop {
        let n = match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut lines = String::new();
        let result = decoder.feed(&buffer[..n], |frame| {
            if let Ok(frame) = frame {
                let ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0);
                let version = match frame.header.version {
                    FramingVersion::V7 => 7,
                    FramingVersion::V8 => 8,
                };
                lines.push_str(&format!("{ms} {version} {}\n", hex(frame.packet)));
            }
        });
        if let Ok(mut file) = file.lock() {
            let _ = file.write_all(lines.as_bytes());
            let _ = file.flush();
        }
        if result.is_err() {
            return;
        }
    }
}
