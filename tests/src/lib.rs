//! Helpers shared by the integration tests: start a broker on 127.0.0.1:0 with a temporary
//! data directory, and talk to it over real WebSocket and HTTP.
