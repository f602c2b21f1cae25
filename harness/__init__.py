"""One harness for the tests and the benchmarks: the real peers they start (``ossa serve``,
Orthanc, DCMTK, PostgreSQL), waiting for them (:func:`~harness.peers.free_port`,
:func:`~harness.peers.wait_until`), and configuration files written from the example
``config.toml`` (:func:`~harness.config.write_config`)."""
