/**
 * The sidecar protocol version, mirrored in connector-py/kvtc_connector/protocol.py.
 * History (docs/protocol.md):
 *   1. first version (2026-11-29).
 */
export const PROTOCOL_VERSION = 1;
export const SIDECAR_VERSION = 'kvtc-sidecar/0.1.0';
