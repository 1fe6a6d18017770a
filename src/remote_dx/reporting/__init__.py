"""Reading results: report templates, drafts, signing (with the optional second signature) and
amendment with version history, the hub's Ed25519 signature with a verification code, and the
recognition registry (结果互认).

Entry points for other packages live in :mod:`remote_dx.reporting.service`.
"""
