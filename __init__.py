"""edgespec: speculative decoding split across the network.

The repository root is the ``edgespec`` package (setup.cfg maps ``edgespec = .``), so the
design card's folders ship as ``edgespec.wire``, ``edgespec.edge_client`` and so on instead
of generic top-level names in users' site-packages.
"""

__version__ = "0.1.0"
