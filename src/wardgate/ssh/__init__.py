"""SSH: the gateway's SSH server (asyncssh), exec and shell sessions, SFTP, and the dial to the target."""
