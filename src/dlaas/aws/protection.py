"""Instance scale-in protection while a worker holds messages.

An Auto Scaling group that lowers its desired capacity (by hand, by a scaling policy)
picks instances to terminate; it skips protected ones. The worker protects its
instance when a batch starts and lifts the protection once idle:

    protection = ScaleInProtection.for_worker(settings.worker_id, region=settings.aws_region)
    worker = Worker(..., on_busy=protection.set)
    ...
    protection.close()

Lifting is delayed by ``release_after_s``: a worker under steady load goes busy and
idle many times a second, and the Auto Scaling API is rate-limited, so protection is
set once when work starts and lifted once the worker has stayed idle. Off EC2, or on
an instance in no group, every call is a no-op. Failures are logged, never raised: a
worker must not stop working because the protection call failed.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from dlaas.aws.instance import auto_scaling_group_of, is_instance_id

log = logging.getLogger("dlaas.aws")


class ScaleInProtection:
    def __init__(
        self,
        *,
        instance_id: str | None,
        group_name: str | None,
        client: Any = None,
        release_after_s: float = 10.0,
    ) -> None:
        """Enabled only with an instance ID, a group name and a client; else a no-op."""
        self.instance_id = instance_id
        self.group_name = group_name
        self.client = client
        self.release_after_s = release_after_s
        self.calls = 0  # API calls made, for tests and metrics
        self._protected = False
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    @classmethod
    def for_worker(
        cls,
        worker_id: str | None,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        client: Any = None,
        release_after_s: float = 10.0,
    ) -> ScaleInProtection:
        """Protection for the worker whose ID is ``worker_id`` (an instance ID on EC2).

        Finds the instance's group once; never raises. A worker ID that is not an
        instance ID (a local worker) gives a no-op without calling AWS.
        """
        if not is_instance_id(worker_id):
            return cls(instance_id=None, group_name=None)
        try:
            if client is None:
                from dlaas.aws.clients import make_client

                client = make_client("autoscaling", region=region, endpoint_url=endpoint_url)
            group = auto_scaling_group_of(client, str(worker_id))
        except Exception as exc:  # boto3 missing, no permission, no network: work unprotected
            log.warning("scale_in_protection_unavailable", extra={"error": str(exc)})
            return cls(instance_id=None, group_name=None)
        if group is None:
            return cls(instance_id=None, group_name=None)
        log.info("scale_in_protection_ready", extra={"instance_id": worker_id, "group": group})
        return cls(
            instance_id=worker_id,
            group_name=group,
            client=client,
            release_after_s=release_after_s,
        )

    @property
    def enabled(self) -> bool:
        return bool(self.instance_id and self.group_name and self.client is not None)

    @property
    def protected(self) -> bool:
        """What the group was last told (True while a release is pending)."""
        return self._protected

    def set(self, busy: bool) -> None:
        """Protect at once when ``busy``; lift after ``release_after_s`` of staying idle."""
        if not self.enabled:
            return
        with self._lock:
            if busy:
                self._cancel_release()
                if not self._protected:
                    self._protected = self._call(True)
            elif self._protected and self._timer is None:
                if self.release_after_s <= 0:
                    self._protected = not self._call(False)
                else:
                    self._timer = threading.Timer(self.release_after_s, self._release)
                    self._timer.daemon = True
                    self._timer.start()

    def close(self) -> None:
        """Lift the protection now (the worker is exiting)."""
        if not self.enabled:
            return
        with self._lock:
            self._cancel_release()
            if self._protected:
                self._protected = not self._call(False)

    def _release(self) -> None:
        with self._lock:
            if self._timer is None:
                return  # a new batch started meanwhile
            self._timer = None
            if self._protected:
                self._protected = not self._call(False)

    def _cancel_release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _call(self, protect: bool) -> bool:
        """Set the protection; True if the group took it."""
        self.calls += 1
        try:
            self.client.set_instance_protection(
                InstanceIds=[self.instance_id],
                AutoScalingGroupName=self.group_name,
                ProtectedFromScaleIn=protect,
            )
        except Exception as exc:  # botocore errors of any kind: logged, never fatal
            log.warning(
                "scale_in_protection_failed",
                extra={"instance_id": self.instance_id, "protect": protect, "error": str(exc)},
            )
            return False
        return True
