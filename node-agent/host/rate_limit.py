"""A token bucket shared by upload threads, so a bandwidth cap holds for all of them together."""

from __future__ import annotations

import threading
import time


class TokenBucket:
    def __init__(self, bytes_per_second: int, burst_bytes: int | None = None) -> None:
        self.rate = bytes_per_second
        self.capacity = burst_bytes or max(bytes_per_second // 4, 64 * 1024)
        self._tokens = float(self.capacity)
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self, amount: int) -> None:
        """Block until `amount` bytes may be sent; a rate of 0 means unlimited.

        A request larger than the burst waits for a full bucket and leaves it in debt, which the
        next callers pay off: otherwise it could never be granted, and a read of 1 MiB under a cap
        below 4 MiB/s would wait for ever.
        """
        if self.rate <= 0:
            return
        while True:
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                needed = min(amount, self.capacity)
                if self._tokens >= needed:
                    self._tokens -= amount
                    return
                wait = (needed - self._tokens) / self.rate
            time.sleep(min(wait, 0.25))


class ThrottledBody:
    """A read-only, seekable view of bytes whose reads draw on a TokenBucket.

    Reads are capped in size so one large read cannot take the whole budget at once.
    """

    chunk = 256 * 1024

    def __init__(self, data: bytes | memoryview, bucket: TokenBucket) -> None:
        self._data = memoryview(data)
        self._bucket = bucket
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        remaining = len(self._data) - self._position
        if size is None or size < 0 or size > remaining:
            size = remaining
        size = min(size, self.chunk)
        if size <= 0:
            return b""
        self._bucket.acquire(size)
        piece = self._data[self._position : self._position + size].tobytes()
        self._position += size
        return piece

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._position, 2: len(self._data)}[whence]
        self._position = max(0, min(len(self._data), base + offset))
        return self._position

    def tell(self) -> int:
        return self._position

    def __len__(self) -> int:
        return len(self._data)
