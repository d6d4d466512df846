"""The client side of TLS: a context that verifies the broker against our CA and presents our certificate.

Standard library only; :mod:`comms.mqtt` hands the context to paho.
"""

from __future__ import annotations

import ssl

from comms.settings import MqttSettings

TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def build_tls_context(settings: MqttSettings) -> ssl.SSLContext:
    """A client TLS context from ``settings.tls``: CA, minimum version, optional client certificate.

    The broker's host name is checked against its certificate (the default of
    a ``SERVER_AUTH`` context).
    """
    if settings.tls is None:
        raise ValueError("these MQTT settings have no TLS section")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(settings.tls.ca_file))
    context.minimum_version = TLS_VERSIONS[settings.tls.min_version]
    if settings.tls.cert_file is not None:
        context.load_cert_chain(str(settings.tls.cert_file), str(settings.tls.key_file))
    return context
