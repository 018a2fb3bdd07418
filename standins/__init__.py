"""Loopback stand-ins for DashScope, OpenSearch and a Lambda function URL, shared by tests/, local/ and bench/.

Their facts come from the services' own documentation (cited where each limit is enforced), never from the product.
"""
