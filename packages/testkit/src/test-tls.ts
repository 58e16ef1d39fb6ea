/**
 * A self-signed certificate for 127.0.0.1 and localhost (valid until 2126), for tests that need
 * https on a local server: an https → http redirect, TLS to a mirror. Its private key is public,
 * so it must never protect anything real; trust it only through `testTlsCertificate` in tests.
 */
export const testTlsKey = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgNerb2WXbHNHybblk
9n0KgRyJ8rm6IdvjWi/KJGr9jWihRANCAAQRMFfRK0cn1EsM7TNObFk83ov3FWWb
FPHp8JSXjIsexk9AXF8EruuXSom7ZbTWV8ugBEZzEX4XnK0V5N75Vngp
-----END PRIVATE KEY-----
`

export const testTlsCertificate = `-----BEGIN CERTIFICATE-----
MIIBnzCCAUWgAwIBAgIUXrAy7pxWIg9C3B4b+agM9JrQsaswCgYIKoZIzj0EAwIw
FjEUMBIGA1UEAwwLbGxtZXNoLXRlc3QwIBcNMjYxMTIyMTM0MjA5WhgPMjEyNjEw
MjkxMzQyMDlaMBYxFDASBgNVBAMMC2xsbWVzaC10ZXN0MFkwEwYHKoZIzj0CAQYI
KoZIzj0DAQcDQgAEETBX0StHJ9RLDO0zTmxZPN6L9xVlmxTx6fCUl4yLHsZPQFxf
BK7rl0qJu2W01lfLoARGcxF+F5ytFeTe+VZ4KaNvMG0wHQYDVR0OBBYEFC7+6bdT
SdZ3U20Owc0eTi3EGMF6MB8GA1UdIwQYMBaAFC7+6bdTSdZ3U20Owc0eTi3EGMF6
MA8GA1UdEwEB/wQFMAMBAf8wGgYDVR0RBBMwEYcEfwAAAYIJbG9jYWxob3N0MAoG
CCqGSM49BAMCA0gAMEUCIQCZBRyt8DMg1UHwVXZu/McyRFRLJs25nauMuZWoBunZ
vwIgT9mKuoRbfXwFFZ5k72BirEkar8wBUcxTP2u+KQwfPaU=
-----END CERTIFICATE-----
`
