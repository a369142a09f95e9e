"""Operations composed of several stages: the `seal` command's work and the daemon's sealing
certificates (expiry and renewal).
"""
