"""The Flask dashboard: live device tiles pushed over Server-Sent Events, history from the cloud
store, a labelling queue, and device commands over MQTT. Entry points: :func:`webui.app.create_app`
and ``emq-webui`` (:mod:`webui.cli`)."""
