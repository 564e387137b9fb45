"""What trustlets see: the Iumbase API over secure system calls, and the trustlets themselves."""
