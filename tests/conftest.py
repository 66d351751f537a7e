import os

# The tests import lightdvae with or without the native build; the fallback warning is expected
# noise when it is missing (the tests that need native code skip with their own reason).
os.environ.setdefault("LIGHTDVAE_QUIET_FALLBACK", "1")
