"""Binds 127.0.0.1:29500 and :29501 (torch's fixed test ports) and holds them for a while."""

import socket
import time
import unittest


class FixedPortTest(unittest.TestCase):
    def test_bind_torch_fixed_ports(self) -> None:
        sockets = []
        for port in (29500, 29501):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", port))  # raises "Address already in use" on a shared network
            s.listen()
            sockets.append(s)
        time.sleep(3)
        for s in sockets:
            s.close()


if __name__ == "__main__":
    unittest.main()
