"""Host side: the model PKI's private keys and Authenticode signing.

The model's stand-in for Microsoft's signing service.  The disk builders (``vbsim.boot.disk``),
``vbsim image sign`` and tests sign with it; guest code (``vbsim.nt``, ``vbsim.sk``,
``vbsim.ium`` and attack steps) must never import it: a kernel verifies against the root
certificate in its own memory and holds no key (``vbsim.image.anchors``).
"""

from vbsim.signing.authenticode import build_signed_data, sign_image
from vbsim.signing.pki import PROFILES, Pki, load_pki, model_pki, other_pki
from vbsim.signing.signer import Signer

__all__ = [
    "PROFILES",
    "Pki",
    "Signer",
    "build_signed_data",
    "load_pki",
    "model_pki",
    "other_pki",
    "sign_image",
]
