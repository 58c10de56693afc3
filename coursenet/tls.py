"""
TLS pieces shared by every service: a self-signed development certificate,
server listener strings, and client options that verify the server.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence

from twisted.internet import ssl
from twisted.internet.interfaces import IStreamClientEndpoint


def ensureDevCertificate(directory: str, hostname: str = "localhost", extraNames: Sequence[str] = ()) -> tuple[str, str]:
    """
    Make a self-signed certificate for C{hostname} and 127.0.0.1 in
    C{directory} unless one is already there.

    @param extraNames: more host names and IP addresses it is valid for
        (a classroom server reached by its address, say).

    The certificate is its own CA, so clients trust it with
    C{--cafile DIRECTORY/cert.pem}.

    @return: the paths of the certificate and of the private key.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    if os.path.exists(cert_path) and os.path.exists(key_path):
        return cert_path, key_path
    os.makedirs(directory, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                + [_altName(n) for n in extraNames if n not in (hostname, "127.0.0.1")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _altName(name: str):
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def certificateNames(path: str) -> list[str]:
    """
    The host names and addresses a PEM certificate is valid for.
    """
    from cryptography import x509

    with open(path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n.value) for n in names]


def quoteEndpointValue(value: str) -> str:
    """
    Escape C{:} and C{=} for use inside an endpoint description string.
    """
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def tlsListenString(port: int, cert: str, key: str, interface: str | None = None) -> str:
    """
    The C{ssl:} server endpoint string for a TLS listener on C{port}.
    """
    parts = [f"ssl:{port}"]
    if interface:
        parts.append(f"interface={quoteEndpointValue(interface)}")
    parts.append(f"privateKey={quoteEndpointValue(key)}")
    parts.append(f"certKey={quoteEndpointValue(cert)}")
    return ":".join(parts)


def serverContextFactory(cert: str, key: str) -> ssl.CertificateOptions:
    """
    Server TLS options from PEM files, for tests and for listeners built
    in code rather than from endpoint strings.
    """
    with open(cert, "rb") as f:
        certData = f.read()
    with open(key, "rb") as f:
        keyData = f.read()
    return ssl.PrivateCertificate.loadPEM(certData + keyData).options()


def clientTLSOptions(hostname: str, cafile: str | None = None):
    """
    Client TLS options that verify C{hostname} through service_identity.

    @param cafile: PEM certificates to trust instead of the platform's
        trust store (for a development certificate, say).
    """
    if cafile is None:
        return ssl.optionsForClientTLS(hostname)
    with open(cafile, "rb") as f:
        pem = f.read()
    certs = [
        ssl.Certificate.loadPEM(block)
        for block in _pemBlocks(pem, b"CERTIFICATE")
    ]
    if not certs:
        raise ValueError(f"no certificate found in {cafile}")
    return ssl.optionsForClientTLS(
        hostname, trustRoot=ssl.trustRootFromCertificates(certs)
    )


def _pemBlocks(pem: bytes, label: bytes) -> list[bytes]:
    begin = b"-----BEGIN " + label + b"-----"
    end = b"-----END " + label + b"-----"
    blocks = []
    start = pem.find(begin)
    while start != -1:
        stop = pem.find(end, start)
        if stop == -1:
            break
        blocks.append(pem[start : stop + len(end)] + b"\n")
        start = pem.find(begin, stop)
    return blocks


def clientEndpoint(reactor, host: str, port: int, tls: bool = False,
                   cafile: str | None = None, timeout: float = 30) -> IStreamClientEndpoint:
    """
    A client endpoint for C{host}:C{port}; with C{tls}, wrapped in TLS that
    verifies the server's certificate for C{host} (L{clientTLSOptions}).
    """
    from twisted.internet import endpoints

    endpoint: IStreamClientEndpoint = endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout)
    if tls:
        endpoint = endpoints.wrapClientTLS(clientTLSOptions(host, cafile), endpoint)
    return endpoint
