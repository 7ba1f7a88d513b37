//! The transport suite against the in-memory transport (the reference).

mod transport_suite;

use ember::transport::memory::MemoryTransport;

transport_suite!(async { MemoryTransport::new() });
